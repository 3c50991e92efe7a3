"""Pre-flight: find every file a checkpoint needs, or name all that are missing, before loading.

`resolve_checkpoint(source, ...)` accepts
- a local path: a directory in either layout, or an original-layout DiT `.safetensors` file;
- a Hugging Face Hub repo id in the local cache (`org/name[@revision][/<DiT file>]`, see
  `hub.py`); a local path of the same spelling wins;
and finds the text encoder wherever it lives: `text_encoder=` (a Qwen2.5-VL folder, a diffusers
checkpoint, or a repo id in the cache), else the checkpoint's own (diffusers `text_encoder/` +
`processor/`, or an original-layout Qwen2.5-VL sub-folder), else, for the original layout,
`Qwen/Qwen2.5-VL-7B-Instruct` from the cache, which is how the official app loads it.

It returns a `Checkpoint` naming each file to read and the model version, or raises one
`MissingWeights` that names every missing part and the `stepedit download` command fetching it.
Only directory listings, JSON files and safetensors headers are read. Nothing is downloaded
unless `download=True` (or `fetch_checkpoint`, behind `stepedit download`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from stepedit.errors import WeightsError
from stepedit.model.presets import ModelVersion
from stepedit.weights import hub
from stepedit.weights.formats import (
    DIFFUSERS_INDEX_NAME,
    DIFFUSERS_WEIGHTS_NAME,
    DIT_FILE_NAMES,
    QWEN_FOLDER_NAME,
    VAE_FILE_NAMES,
    Layout,
    check_version,
    choose_dit_file,
    detect_layout,
    dit_file_candidates,
    find_processor_folder,
    find_qwen_folder,
    layout_of_names,
    missing_component_files,
    missing_processor_files,
    missing_text_model_files,
    read_json,
    relative_names,
    safetensors_keys,
    version_from_diffusers_config,
    version_from_original_keys,
    weight_files,
)
from stepedit.weights.hub import DEFAULT_TEXT_ENCODER, PUBLISHED_LAYOUTS, HubRef

logger = logging.getLogger(__name__)

# The folders of a diffusers-layout repository that stepedit reads (plus model_index.json).
DIFFUSERS_FOLDERS = ("transformer", "vae", "text_encoder", "processor", "tokenizer", "scheduler")


class MissingWeights(WeightsError):
    """Parts of a checkpoint are absent: `missing` names each, `commands` fetch them."""

    def __init__(
        self,
        source: str,
        missing: Sequence[str],
        commands: Sequence[str],
        notes: Sequence[str] = (),
    ) -> None:
        lines = [f"cannot load {source}: {len(missing)} part(s) missing"]
        lines += [f"  - {item}" for item in missing]
        if commands:
            lines.append("fetch with:")
            lines += [f"  {command}" for command in commands]
        lines += notes
        super().__init__("\n".join(lines))
        self.source = source
        self.missing = tuple(missing)
        self.commands = tuple(commands)
        self.notes = tuple(notes)

    def __reduce__(self) -> tuple[type[MissingWeights], tuple[object, ...]]:
        # Rebuilt from its parts when pickled (a worker process reporting a failed load).
        return type(self), (self.source, self.missing, self.commands, self.notes)


@dataclass(frozen=True)
class TextEncoder:
    """Where the Qwen2.5-VL model and its processor files are (the same folder, or two)."""

    model: Path
    processor: Path
    origin: str  # for logs and messages: a path, or "<repo id> (Hugging Face cache)"


@dataclass(frozen=True)
class Checkpoint:
    """Every file a load reads, found before anything is loaded."""

    source: str
    layout: Layout
    root: Path  # the directory (a Hub cache snapshot for repo ids)
    dit_files: tuple[Path, ...]  # original: the DiT file; diffusers: transformer/ weights
    vae_files: tuple[Path, ...]
    text_encoder: TextEncoder | None  # None only where it was not required (conversion)
    version: ModelVersion

    def describe(self) -> str:
        text = self.text_encoder.origin if self.text_encoder else "none"
        return (
            f"{self.source}: {self.layout} layout, {self.version}; "
            f"DiT {', '.join(p.name for p in self.dit_files)}; "
            f"VAE {', '.join(p.name for p in self.vae_files)}; text encoder {text}"
        )


@dataclass
class _Findings:
    missing: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, what: str, command: str | None) -> None:
        self.missing.append(what)
        if command is not None and command not in self.commands:
            self.commands.append(command)

    def raise_if_any(self, source: str) -> None:
        if not self.missing:
            return
        notes = list(self.notes)
        if self.commands and hub.is_offline():
            notes.append("(HF_HUB_OFFLINE is set: download where the Hub can be reached)")
        raise MissingWeights(source, self.missing, self.commands, notes)


@dataclass(frozen=True)
class _Place:
    """Where a source lives: its directory (None: a repo id not in the cache)."""

    label: str
    root: Path | None
    dit_file: Path | None  # a DiT file named by the source itself
    ref: HubRef | None
    command: str | None  # the `stepedit download` command that fetches this source


def download_command(source: str, version: ModelVersion | None = None) -> str:
    return f"stepedit download {source}" + (f" --model-version {version}" if version else "")


def resolve_checkpoint(
    source: str | Path,
    *,
    version: str | None = None,
    text_encoder: str | Path | None = None,
    revision: str | None = None,
    download: bool = False,
    need_text_encoder: bool = True,
) -> Checkpoint:
    """Find every file of `source`, or raise one `MissingWeights` naming all that are missing.

    `version` picks the DiT file of a repository holding several and must agree with the weights.
    `revision` applies to a repo id (as `@revision` in the id does). With `download`, what is
    missing is fetched into the Hub cache first; what is cached is used without the network.
    Without `need_text_encoder` (conversion), an absent default text encoder is no error.
    """
    wanted = None if version is None else check_version(version)
    if not download:
        return _resolve(source, wanted, text_encoder, revision, need_text_encoder)
    try:
        return _resolve(source, wanted, text_encoder, revision, need_text_encoder)
    except MissingWeights:
        if hub.is_offline():
            logger.warning("HF_HUB_OFFLINE is set: not downloading what %s lacks", source)
            raise
    fetch_checkpoint(
        source,
        version=wanted,
        text_encoder=text_encoder,
        revision=revision,
        with_text_encoder=need_text_encoder,
    )
    return _resolve(source, wanted, text_encoder, revision, need_text_encoder)


def _resolve(
    source: str | Path,
    version: ModelVersion | None,
    text_encoder: str | Path | None,
    revision: str | None,
    need_text_encoder: bool,
) -> Checkpoint:
    found = _Findings()
    # 1. Where the source is: a local path, else a repo id's cached snapshot.
    place = _locate(str(source), revision, version, found)
    if place.root is None:
        # Not in the cache: say in the same message whether the text encoder is missing too.
        repo_layout = PUBLISHED_LAYOUTS.get(place.ref.repo_id) if place.ref else None
        if need_text_encoder and (text_encoder is not None or repo_layout == "original"):
            _find_text_encoder(text_encoder, None, place, found)
        found.raise_if_any(str(source))
    assert place.root is not None
    if place.ref is not None:
        found.notes.append(f"(looked in {place.root})")
    # 2. The layout, then the DiT and VAE files it puts where.
    layout = _layout_of(place, found)
    if layout == "original":
        dit_files, vae_files = _find_original(place, version, found)
    else:
        dit_files, vae_files = _find_diffusers(place, found)
    # 3. The text encoder, wherever it lives.
    encoder = _find_text_encoder(text_encoder, layout, place, found, required=need_text_encoder)
    # 4. One error naming everything missing, before any weights are read.
    found.raise_if_any(str(source))
    # 5. The version, from the DiT's safetensors header or config.json.
    checkpoint = Checkpoint(
        source=str(source),
        layout=layout,
        root=place.root,
        dit_files=tuple(dit_files),
        vae_files=tuple(vae_files),
        text_encoder=encoder,
        version=checked_version(layout, dit_files, version),
    )
    logger.info("%s", checkpoint.describe())
    return checkpoint


def detect_version(path: str | Path, override: str | None = None) -> ModelVersion:
    """The model version of the checkpoint at `path`; `override` wins where it is compatible."""
    return resolve_checkpoint(path, version=override, need_text_encoder=False).version


def checked_version(
    layout: Layout, dit_files: Sequence[Path], override: ModelVersion | None
) -> ModelVersion:
    """The version the DiT's structure says, or `override` where the weights allow it.

    The version decides the DiT's structure (v1.0: connector.scale_factor; v1.2:
    text_token_mapping), so an override that contradicts the weights is an error, except v1.0
    over a diffusers checkpoint with no marker (the scale is then taken as folded, i.e. 1).
    """
    detected: ModelVersion
    if layout == "original":
        detected = version_from_original_keys(safetensors_keys(list(dit_files)))
        evidence = f"keys of {dit_files[0].name!r}"
    else:
        config = read_json(dit_files[0].parent / "config.json")
        detected = version_from_diffusers_config(config)
        evidence = "transformer/config.json"
    if override is None:
        logger.info("detected model version %s from %s", detected, evidence)
        return detected
    compatible = override == detected or (
        layout == "diffusers" and {override, detected} == {"v1.0", "v1.1"}
    )
    if not compatible:
        raise WeightsError(
            f"version {override} was asked for but the checkpoint is {detected} (from "
            f"{evidence}); the DiT structures differ"
        )
    return override


# --- where the source is -------------------------------------------------------------------------


def _locate(
    source: str, revision: str | None, version: ModelVersion | None, found: _Findings
) -> _Place:
    path = Path(source).expanduser()
    if path.exists():  # a local path wins over a repo id spelled the same way
        if revision is not None:
            raise WeightsError(f"revision={revision!r} is for Hub repo ids; {source!r} is a path")
        if path.is_file():
            detect_layout(path)  # refuses files that are no DiT
            return _Place(str(path), path.parent, path, None, None)
        return _Place(str(path), path, None, None, None)
    ref = hub.parse_hub_ref(source)
    if ref is None:
        raise WeightsError(
            f"checkpoint path {source!r} does not exist (nor is it a Hugging Face repo id, "
            "org/name)"
        )
    ref = ref.with_revision(revision)
    is_diffusers = PUBLISHED_LAYOUTS.get(ref.repo_id) == "diffusers"
    command = download_command(str(ref), None if is_diffusers else version)
    snapshot = hub.cached_snapshot(ref)
    if snapshot is None:
        found.add(
            f"{ref}: not a local path, and not in the Hugging Face cache ({hub.cache_dir()})",
            command,
        )
        return _Place(str(ref), None, None, ref, command)
    logger.info("%s: using the Hugging Face cache snapshot %s", ref, snapshot)
    dit_file = snapshot / ref.filename if ref.filename else None
    return _Place(str(ref), snapshot, dit_file, ref, command)


def _layout_of(place: _Place, found: _Findings) -> Layout:
    assert place.root is not None
    if place.dit_file is not None:
        return "original"
    if place.ref is None:
        return detect_layout(place.root)  # a local directory: its own error when unknown
    layout = layout_of_names(relative_names(place.root))
    if layout is None and place.ref.repo_id in PUBLISHED_LAYOUTS:
        layout = cast(Layout, PUBLISHED_LAYOUTS[place.ref.repo_id])
    if layout is None:
        found.add(
            f"{place.ref}: the cached snapshot holds no checkpoint (no model_index.json, no "
            f"DiT .safetensors file; found {sorted(relative_names(place.root))[:12]})",
            place.command,
        )
        found.raise_if_any(place.label)
    return cast(Layout, layout)


# --- the DiT and the VAE -------------------------------------------------------------------------


def _find_original(
    place: _Place, version: ModelVersion | None, found: _Findings
) -> tuple[list[Path], list[Path]]:
    assert place.root is not None
    dit: Path | None = place.dit_file
    if dit is not None and not dit.is_file():
        found.add(f"DiT file {dit.name}", place.command)
        dit = None
    elif dit is None:
        chosen = choose_dit_file(relative_names(place.root), version, place.label)
        if chosen is None:
            expected = (
                f"{DIT_FILE_NAMES[version]} ({version})"
                if version
                else "step1x-edit-v1p1-official.safetensors (or another step1x-edit*.safetensors)"
            )
            others = dit_file_candidates(relative_names(place.root))
            found.add(
                f"DiT file {expected}" + (f"; found {others}" if others else ""), place.command
            )
        else:
            dit = place.root / chosen
    vaes = [place.root / name for name in VAE_FILE_NAMES if (place.root / name).is_file()]
    if not vaes:
        found.add("VAE file vae.safetensors (or ae.safetensors)", place.command)
    return ([dit] if dit else []), vaes[:1]


def _find_diffusers(place: _Place, found: _Findings) -> tuple[list[Path], list[Path]]:
    assert place.root is not None
    files: dict[str, list[Path]] = {}
    for name in ("transformer", "vae"):
        folder = place.root / name
        missing = missing_component_files(folder)
        if missing:
            found.add(f"{name}/: " + ", ".join(missing), place.command)
        files[name] = weight_files(folder, DIFFUSERS_WEIGHTS_NAME, DIFFUSERS_INDEX_NAME)[0]
    return files["transformer"], files["vae"]


# --- the text encoder ----------------------------------------------------------------------------


def _find_text_encoder(
    spec: str | Path | None,
    layout: Layout | None,
    place: _Place,
    found: _Findings,
    *,
    required: bool = True,
) -> TextEncoder | None:
    """The text encoder named by `spec`, else the checkpoint's own, else the default repo."""
    own = _Findings() if not required and spec is None else found
    encoder: TextEncoder | None
    if spec is not None:
        encoder = _named_text_encoder(str(spec), found)
    elif layout == "diffusers":
        assert place.root is not None
        encoder = _text_encoder_in(place.root, place.label, place.command, own, is_diffusers=True)
    else:
        qwen = find_qwen_folder(place.root) if place.root is not None else None
        if qwen is not None:
            encoder = _text_encoder_in(qwen, str(qwen), place.command, own)
        else:
            default = hub.parse_hub_ref(DEFAULT_TEXT_ENCODER)
            assert default is not None
            encoder = _hub_text_encoder(default, own)
    if own is not found and own.missing:
        logger.warning("no text encoder for %s: %s", place.label, "; ".join(own.missing))
        return None
    return encoder


def _named_text_encoder(spec: str, found: _Findings) -> TextEncoder | None:
    path = Path(spec).expanduser()
    if path.exists():  # a local folder wins over a repo id spelled the same way
        return _text_encoder_in(path, str(path), None, found)
    ref = hub.parse_hub_ref(spec)
    if ref is None or ref.filename is not None:
        found.add(f"text encoder {spec!r}: no such folder, nor a Hugging Face repo id", None)
        return None
    return _hub_text_encoder(ref, found)


def _hub_text_encoder(ref: HubRef, found: _Findings) -> TextEncoder | None:
    command = download_command(str(ref))
    snapshot = hub.cached_snapshot(ref)
    if snapshot is None:
        found.add(f"text encoder {ref}: not in the Hugging Face cache ({hub.cache_dir()})", command)
        return None
    return _text_encoder_in(snapshot, f"{ref} (Hugging Face cache)", command, found)


def _text_encoder_in(
    folder: Path,
    label: str,
    command: str | None,
    found: _Findings,
    *,
    is_diffusers: bool | None = None,
) -> TextEncoder:
    """A Qwen2.5-VL folder (model and processor files together), or a diffusers checkpoint's
    `text_encoder/` and `processor/` folders (told apart by the folder's content when None)."""
    if is_diffusers is None:
        is_diffusers = (folder / "model_index.json").is_file() or (folder / "text_encoder").is_dir()
    if not is_diffusers:
        missing = missing_text_model_files(folder) + missing_processor_files(folder)
        if missing:
            found.add(f"text encoder in {label}: " + ", ".join(missing), command)
        return TextEncoder(folder, folder, label)
    model = folder / "text_encoder"
    processor = find_processor_folder(folder) or folder / "processor"
    missing = [f"text_encoder/{name}" for name in missing_text_model_files(model)]
    missing += [f"{processor.name}/{name}" for name in missing_processor_files(processor)]
    if missing:
        found.add(f"text encoder in {label}: " + ", ".join(missing), command)
    return TextEncoder(model, processor, f"{label} ({model.name}/, {processor.name}/)")


# --- downloading ---------------------------------------------------------------------------------


def fetch_checkpoint(
    source: str | Path,
    *,
    version: str | None = None,
    text_encoder: str | Path | None = None,
    revision: str | None = None,
    with_text_encoder: bool = True,
) -> None:
    """Download into the Hub cache what loading `source` needs.

    Of an original-layout repository only the chosen DiT file (by `version`, else the newest;
    FP8 only when named) and the VAE are fetched, plus its Qwen2.5-VL folder if it has one; a
    diffusers-layout repository's component folders are fetched whole. With `with_text_encoder`,
    a text encoder that comes from the Hub (`text_encoder=`, or the default for an original
    checkpoint without a Qwen2.5-VL folder) is fetched too. Local sources fetch nothing of their
    own. `HF_HUB_OFFLINE` forbids all of it.
    """
    if hub.is_offline():
        raise WeightsError(f"HF_HUB_OFFLINE is set: cannot download {source}; unset it first")
    wanted = None if version is None else check_version(version)
    path = Path(str(source)).expanduser()
    layout: Layout
    if path.exists():
        root, layout = (path.parent if path.is_file() else path), detect_layout(path)
    else:
        ref = hub.parse_hub_ref(str(source))
        if ref is None:
            raise WeightsError(
                f"{str(source)!r} is neither a local path nor a Hugging Face repo id"
            )
        ref = ref.with_revision(revision)
        names = hub.remote_files(ref)
        detected = layout_of_names(names) or PUBLISHED_LAYOUTS.get(ref.repo_id)
        if detected is None:
            raise WeightsError(
                f"{ref} holds no Step1X-Edit checkpoint (no model_index.json, no DiT .safetensors "
                f"file); found {sorted(names)[:12]}"
            )
        layout = cast(Layout, detected)
        root = hub.fetch(ref, files_to_fetch(layout, names, wanted, ref))
    if with_text_encoder:
        encoder = _text_encoder_to_fetch(text_encoder, root, layout)
        if encoder is not None:
            hub.fetch(encoder, None)


def files_to_fetch(
    layout: Layout, names: Sequence[str], version: ModelVersion | None, ref: HubRef
) -> list[str]:
    """The `allow_patterns` that fetch what a load of `ref` reads, from the repo's file names."""
    if layout == "diffusers":
        return ["model_index.json", *(f"{folder}/*" for folder in DIFFUSERS_FOLDERS)]
    dit = ref.filename or choose_dit_file(names, version, str(ref))
    if dit is None or dit not in names:
        wanted = dit or (DIT_FILE_NAMES[version] if version else "a step1x-edit*.safetensors file")
        raise WeightsError(f"{ref} has no DiT file {wanted}; it has {dit_file_candidates(names)}")
    patterns = [dit, *(name for name in VAE_FILE_NAMES if name in names)]
    if any(name.startswith(f"{QWEN_FOLDER_NAME}/") for name in names):
        patterns.append(f"{QWEN_FOLDER_NAME}/*")
    return patterns


def _text_encoder_to_fetch(spec: str | Path | None, root: Path, layout: Layout) -> HubRef | None:
    if spec is not None:
        return None if Path(spec).expanduser().exists() else hub.parse_hub_ref(str(spec))
    if layout == "original" and find_qwen_folder(root) is None:
        return hub.parse_hub_ref(DEFAULT_TEXT_ENCODER)
    return None
