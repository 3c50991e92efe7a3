"""LoRA adapter files for the DiT, read strictly into low-rank changes of our Linear layers.

Two formats (docs/lora.md):

**Official** (the Step1X-Edit repository's fine-tuning output, sd-scripts' `networks.lora` as its
`library/lora_module.py` has it, which its `inference.py --lora` merges):

    lora_unet_<module path, "." -> "_">.lora_down.weight   [rank, in]
    lora_unet_<module path, "." -> "_">.lora_up.weight     [out, rank]
    lora_unet_<module path, "." -> "_">.alpha              scalar

for every Linear inside `double_blocks.*` and `single_blocks.*`, and `img_in`, `time_in.*`,
`vector_in.*`, `txt_in`. Module paths are ours (our attribute names are the original
checkpoint's), e.g. `lora_unet_double_blocks_0_img_attn_qkv` is `double_blocks.0.img_attn.qkv`.
The change is `multiplier * alpha / rank * up @ down` with rank = lora_down's rows; an alpha of
0 means alpha = rank, as in sd-scripts (a file without alpha keys is read the same way).

**Diffusers / PEFT** (keys of the diffusers `Step1XEditTransformer2DModel`):

    [transformer. | base_model.model.]<module>.lora_A.weight   [rank, in]
    [transformer. | base_model.model.]<module>.lora_B.weight   [out, rank]
    (optional) <module>.alpha

The change is `lora_alpha / rank * B @ A` (`/ sqrt(rank)` with `use_rslora`). lora_alpha comes from
the `lora_adapter_metadata` entry of the safetensors header (PEFT's LoraConfig as diffusers
saves it: r, lora_alpha, rank_pattern, alpha_pattern), else from `.alpha` keys, else it is the
rank of the first lora_B in key order: diffusers' rule, which is a scale of 1 when all ranks are
equal. Diffusers modules map onto ours through the key table of `diffusers_layout`: `to_q`,
`to_k`, `to_v` become row blocks of our fused `qkv` (single blocks: `to_q/to_k/to_v/proj_mlp` of
`linear1`), so their changes stack into one low-rank change of rank r_q + r_k + r_v whose up
matrix is block-diagonal; `norm_out.linear` is `final_layer.adaLN_modulation.1` with its halves
swapped.

Every key must be understood: an unknown module, a key of another kind (LyCORIS, DoRA, text
encoder), a rank that disagrees between up and down or with the metadata, or a shape that does
not fit the Linear raises `WeightsError` naming the key.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from safetensors import safe_open
from torch import Tensor, nn

from stepedit.errors import InvalidInput, WeightsError
from stepedit.model.dit import Step1XEditDiT
from stepedit.model.lora import Adapter, LowRank
from stepedit.request import LORA_NAME_PATTERN, MAX_LORA_SCALE
from stepedit.weights.diffusers_layout import dit_key_maps
from stepedit.weights.tensors import first_keys

if TYPE_CHECKING:
    from stepedit.pipeline import EditPipeline

logger = logging.getLogger(__name__)

LoraFormat = Literal["official", "diffusers"]

OFFICIAL_PREFIX = "lora_unet_"
# The Linears outside the blocks that the official network can adapt (its `in_dims` filters).
OFFICIAL_OUTSIDE_BLOCKS = ("img_in", "time_in.", "vector_in.", "txt_in")
DIFFUSERS_PREFIXES = ("transformer.", "base_model.model.")
METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY


# --- what the command line names ----------------------------------------------------------------


@dataclass(frozen=True)
class LoraSpec:
    """One `--lora [NAME=]PATH[:SCALE]`: a file, the name requests use, its default scale.

    A scale of 0 preloads the adapter for requests that ask for it without applying it to the
    others."""

    path: Path
    name: str
    scale: float = 1.0


def parse_lora_spec(text: str) -> LoraSpec:
    """`[NAME=]PATH[:SCALE]`, NAME defaulting to the file's stem; InvalidInput(param="lora")."""
    name: str | None = None
    rest = text.strip()
    head, sep, tail = rest.partition("=")
    if sep and re.fullmatch(LORA_NAME_PATTERN, head):
        name, rest = head, tail
    scale = 1.0
    path_text, sep, scale_text = rest.rpartition(":")
    if sep and path_text:
        try:
            scale = float(scale_text)
        except ValueError:
            path_text = rest  # a colon inside the path, no scale
        else:
            rest = path_text
    path = Path(rest).expanduser()
    name = name or path.stem
    if not re.fullmatch(LORA_NAME_PATTERN, name):
        raise InvalidInput(
            f"--lora {text!r}: {name!r} cannot be a LoRA name (letters, digits, '.', '_', '-'; "
            "at most 64); give one as NAME=PATH",
            param="lora",
        )
    if not math.isfinite(scale) or abs(scale) > MAX_LORA_SCALE:
        raise InvalidInput(
            f"--lora {text!r}: the scale must be in [-{MAX_LORA_SCALE:g}, {MAX_LORA_SCALE:g}]",
            param="lora",
        )
    if not path.is_file():
        raise InvalidInput(f"--lora {text!r}: no such file: {path}", param="lora")
    return LoraSpec(path=path, name=name, scale=scale)


def parse_lora_specs(texts: Iterable[str]) -> list[LoraSpec]:
    specs = [parse_lora_spec(text) for text in texts]
    names = [spec.name for spec in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InvalidInput(f"--lora: the name(s) {twice} are given twice", param="lora")
    return specs


# --- reading a file -----------------------------------------------------------------------------


def _read_file(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    if path.suffix != ".safetensors":
        raise WeightsError(f"LoRA {str(path)!r}: only .safetensors files are read (no pickles)")
    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
            metadata = dict(handle.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types
        raise WeightsError(f"cannot read LoRA {str(path)!r}: {exc}") from exc
    if not tensors:
        raise WeightsError(f"LoRA {str(path)!r} holds no tensors")
    return tensors, metadata


def detect_lora_format(keys: Iterable[str]) -> LoraFormat:
    keys = list(keys)
    text_encoder = [k for k in keys if k.startswith("lora_te")]
    if text_encoder:
        raise WeightsError(
            f"this LoRA adapts the text encoder too (keys like {text_encoder[0]!r}); only DiT "
            "adapters are supported"
        )
    if all(k.startswith(OFFICIAL_PREFIX) for k in keys):
        return "official"
    if any(".lora_A." in k or ".lora_B." in k for k in keys):
        return "diffusers"
    raise WeightsError(
        "not a LoRA file stepedit reads: expected lora_unet_*.lora_down/lora_up keys (official "
        f"format) or *.lora_A/lora_B keys (diffusers/PEFT); found {first_keys(sorted(keys))}"
    )


def read_lora(path: str | Path, dit: Step1XEditDiT, *, name: str | None = None) -> Adapter:
    """Read a LoRA file (either format) against `dit`: float32 low-rank changes per Linear."""
    path = Path(path)
    tensors, metadata = _read_file(path)
    fmt = detect_lora_format(tensors)
    linears = {n: m for n, m in dit.named_modules() if isinstance(m, nn.Linear)}
    what = f"LoRA {path.name}"
    if fmt == "official":
        deltas = _official_deltas(tensors, linears, what)
    else:
        deltas = _diffusers_deltas(tensors, metadata, dit, linears, what)
    adapter = Adapter(name=name or path.stem, path=str(path), format=fmt, deltas=deltas)
    logger.info("%s: %s format, %d Linears, rank %d", what, fmt, len(deltas), adapter.rank)
    return adapter


def _check_pair(
    key: str, down: Tensor, up: Tensor, out_features: int, in_features: int, what: str
) -> None:
    """down [rank, in] and up [out, rank] fit a Linear of `out_features` x `in_features`."""
    if down.ndim != 2 or up.ndim != 2:
        raise WeightsError(
            f"{what}: {key!r} has {down.ndim}-d down / {up.ndim}-d up weights; a Linear's LoRA "
            "is two matrices"
        )
    if up.shape[1] != down.shape[0]:
        raise WeightsError(
            f"{what}: {key!r} has rank {down.shape[0]} in its down (A) weight {list(down.shape)} "
            f"but {up.shape[1]} in its up (B) weight {list(up.shape)}"
        )
    if down.shape[1] != in_features or up.shape[0] != out_features:
        raise WeightsError(
            f"{what}: {key!r} is [{up.shape[0]} x {down.shape[1]}] (out x in), the Linear it "
            f"adapts is [{out_features} x {in_features}]"
        )


def official_targets(linears: dict[str, nn.Linear]) -> dict[str, str]:
    """lora_unet_* name -> our module name, for every Linear the official network adapts."""
    return {
        OFFICIAL_PREFIX + name.replace(".", "_"): name
        for name in linears
        if name.startswith(("double_blocks.", "single_blocks.", *OFFICIAL_OUTSIDE_BLOCKS))
    }


def _official_deltas(
    tensors: dict[str, Tensor], linears: dict[str, nn.Linear], what: str
) -> dict[str, LowRank]:
    targets = official_targets(linears)
    groups: dict[str, dict[str, Tensor]] = {}
    for key, tensor in tensors.items():
        module, _, part = key.partition(".")
        if part not in ("lora_down.weight", "lora_up.weight", "alpha"):
            raise WeightsError(
                f"{what}: key {key!r} is not a LoRA weight of the official format "
                "(lora_down.weight, lora_up.weight, alpha); LyCORIS/LoKr/DoRA files are not read"
            )
        groups.setdefault(module, {})[part] = tensor
    unknown = [m for m in groups if m not in targets]
    if unknown:
        raise WeightsError(
            f"{what}: {len(unknown)} module(s) the DiT has no Linear for: "
            f"{first_keys(sorted(unknown))}"
        )
    deltas: dict[str, LowRank] = {}
    for module, parts in groups.items():
        if "lora_down.weight" not in parts or "lora_up.weight" not in parts:
            missing = "lora_up" if "lora_down.weight" in parts else "lora_down"
            raise WeightsError(f"{what}: {module!r} has no {missing}.weight")
        down, up = parts["lora_down.weight"].float(), parts["lora_up.weight"].float()
        linear = linears[targets[module]]
        key = f"{module}.lora_down.weight"
        _check_pair(key, down, up, linear.out_features, linear.in_features, what)
        rank = down.shape[0]
        alpha = float(parts["alpha"].float().item()) if "alpha" in parts else 0.0
        alpha = alpha or float(rank)  # sd-scripts: alpha None or 0 means alpha = rank
        deltas[targets[module]] = LowRank(up=up, down=down, gain=alpha / rank)
    return deltas


@dataclass(frozen=True)
class _Place:
    """Where one diffusers Linear's output rows sit in one of our Linears."""

    module: str
    offset: int
    rows: int
    swap_halves: bool = False


def diffusers_places(dit: Step1XEditDiT) -> dict[str, _Place]:
    """diffusers module name -> its rows in our module, from the two-way key table."""
    places: dict[str, _Place] = {}
    for entry in dit_key_maps(dit.config):
        if not entry.original.endswith(".weight"):
            continue
        ours = entry.original.removesuffix(".weight")
        parts = [key.removesuffix(".weight") for key in entry.diffusers]
        if entry.kind == "concat":
            offset = 0
            for part, size in zip(parts, entry.sizes, strict=True):
                places[part] = _Place(ours, offset, size)
                offset += size
        elif entry.kind in ("rename", "swap_halves"):
            places[parts[0]] = _Place(ours, 0, -1, entry.kind == "swap_halves")
    return places


def _strip_prefix(tensors: dict[str, Tensor], what: str) -> dict[str, Tensor]:
    for prefix in DIFFUSERS_PREFIXES:
        if all(k.startswith(prefix) for k in tensors):
            return {k.removeprefix(prefix): v for k, v in tensors.items()}
    prefixed = [k for k in tensors if k.startswith(DIFFUSERS_PREFIXES)]
    if prefixed:
        others = [k for k in tensors if not k.startswith(DIFFUSERS_PREFIXES)]
        raise WeightsError(
            f"{what}: keys outside the transformer (a pipeline LoRA with other components?): "
            f"{first_keys(sorted(others))}"
        )
    return tensors


def _metadata_config(metadata: dict[str, str], what: str) -> dict[str, Any] | None:
    raw = metadata.get(METADATA_KEY)
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{what}: {METADATA_KEY} in the header is not JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise WeightsError(f"{what}: {METADATA_KEY} is not a JSON object")
    # A pipeline's save_lora_weights prefixes each entry with the component.
    if any(k.startswith("transformer.") for k in config):
        config = {k.removeprefix("transformer."): v for k, v in config.items()}
    for flag in ("use_dora", "lora_bias"):
        if config.get(flag):
            raise WeightsError(f"{what}: {flag}=true adapters are not supported")
    return config


def _pattern_value(patterns: dict[str, Any], module: str) -> Any:
    """PEFT's rank_pattern/alpha_pattern lookup: a key matches the module's full name or a
    dotted suffix of it; a leading '^' anchors it at the start."""
    for pattern, value in patterns.items():
        body = pattern.removeprefix("^")
        if re.fullmatch(body, module) or (
            not pattern.startswith("^") and re.fullmatch(rf"(.*\.)?{body}", module)
        ):
            return value
    return None


def _diffusers_scales(
    groups: dict[str, dict[str, Tensor]], config: dict[str, Any] | None, what: str
) -> dict[str, float]:
    """lora_alpha / rank (or / sqrt(rank)) per diffusers module, as diffusers + PEFT compute it."""
    ranks = {module: parts["lora_A.weight"].shape[0] for module, parts in groups.items()}
    scales: dict[str, float] = {}
    if config is not None:
        r = int(config.get("r", 8))
        alpha = float(config.get("lora_alpha", r))
        rank_pattern = config.get("rank_pattern") or {}
        alpha_pattern = config.get("alpha_pattern") or {}
        rslora = bool(config.get("use_rslora", False))
        for module, rank in ranks.items():
            wanted = _pattern_value(rank_pattern, module)
            wanted = r if wanted is None else int(wanted)
            if wanted != rank:
                raise WeightsError(
                    f"{what}: {module + '.lora_A.weight'!r} has rank {rank}, the adapter's "
                    f"metadata says {wanted}"
                )
            module_alpha = _pattern_value(alpha_pattern, module)
            module_alpha = alpha if module_alpha is None else float(module_alpha)
            scales[module] = module_alpha / (math.sqrt(rank) if rslora else rank)
        return scales
    alphas = {m: float(p["alpha"].float().item()) for m, p in groups.items() if "alpha" in p}
    if alphas:
        # diffusers: the most common alpha for modules without a key of their own.
        common = Counter(alphas.values()).most_common(1)[0][0]
        return {m: alphas.get(m, common) / rank for m, rank in ranks.items()}
    # No alpha anywhere: diffusers sets lora_alpha to the first lora_B's rank (key order).
    first = ranks[min(groups)]
    return {m: first / rank for m, rank in ranks.items()}


def _diffusers_deltas(
    tensors: dict[str, Tensor],
    metadata: dict[str, str],
    dit: Step1XEditDiT,
    linears: dict[str, nn.Linear],
    what: str,
) -> dict[str, LowRank]:
    tensors = _strip_prefix(tensors, what)
    config = _metadata_config(metadata, what)
    places = diffusers_places(dit)
    groups: dict[str, dict[str, Tensor]] = {}
    for key, tensor in tensors.items():
        for part in ("lora_A.weight", "lora_B.weight", "alpha"):
            if key.endswith("." + part):
                groups.setdefault(key.removesuffix("." + part), {})[part] = tensor
                break
        else:
            raise WeightsError(
                f"{what}: key {key!r} is not a LoRA weight of the diffusers format "
                "(lora_A.weight, lora_B.weight, alpha); DoRA and LoRA biases are not read"
            )
    unknown = [m for m in groups if m not in places or places[m].module not in linears]
    if unknown:
        raise WeightsError(
            f"{what}: {len(unknown)} module(s) the diffusers transformer has no Linear for: "
            f"{first_keys(sorted(unknown))}"
        )
    for module, parts in groups.items():
        if "lora_A.weight" not in parts or "lora_B.weight" not in parts:
            missing = "lora_B" if "lora_A.weight" in parts else "lora_A"
            raise WeightsError(f"{what}: {module!r} has no {missing}.weight")
    scales = _diffusers_scales(groups, config, what)

    pieces: dict[str, list[tuple[_Place, Tensor, Tensor]]] = {}
    for module, parts in sorted(groups.items()):
        place = places[module]
        linear = linears[place.module]
        down, up = parts["lora_A.weight"].float(), parts["lora_B.weight"].float()
        rows = linear.out_features if place.rows < 0 else place.rows
        _check_pair(f"{module}.lora_A.weight", down, up, rows, linear.in_features, what)
        up = up * scales[module]
        if place.rows >= 0:  # a row block of a fused Linear: zero elsewhere
            full = torch.zeros(linear.out_features, up.shape[1])
            full[place.offset : place.offset + rows] = up
            up = full
        if place.swap_halves:
            first, second = up.chunk(2, dim=0)
            up = torch.cat([second, first], dim=0)
        pieces.setdefault(place.module, []).append((place, up, down))
    return {
        ours: LowRank(
            up=torch.cat([up for _, up, _ in parts], dim=1),
            down=torch.cat([down for _, _, down in parts], dim=0),
        )
        for ours, parts in pieces.items()
    }


# --- applying -----------------------------------------------------------------------------------


def load_loras(pipeline: EditPipeline, specs: Sequence[LoraSpec], *, fuse: bool = True) -> None:
    """Read every `--lora` file against the pipeline's DiT and register it in `pipeline.loras`
    with its default scale. With `fuse`, the default set is merged into the weights where they
    are plain floating-point tensors (see `stepedit.model.lora.LoraSet`)."""
    if not specs:
        return
    dit = pipeline.loras.dit
    if not isinstance(dit, Step1XEditDiT):
        raise TypeError(f"LoRA adapters need a Step1XEditDiT, not {type(dit).__name__}")
    adapters = [(read_lora(spec.path, dit, name=spec.name), spec.scale) for spec in specs]
    pipeline.loras.load(adapters, fuse=fuse)


def apply_lora_file(dit: Step1XEditDiT, path: str | Path, scale: float = 1.0) -> Step1XEditDiT:
    """Merge one LoRA file into `dit` in place, as the official `merge_to` does (float32 math,
    cast back to each weight's dtype), and return it. For scripts: the pipeline loads adapters
    through `load_loras`."""
    adapter = read_lora(path, dit)
    modules = dict(dit.named_modules())
    for name, delta in adapter.deltas.items():
        linear = modules[name]
        assert isinstance(linear, nn.Linear)
        delta.merge_into(linear, scale)
    return dit
