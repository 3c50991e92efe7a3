// stepedit playground: plain JavaScript over the native job API (/v1/jobs, SSE progress).
// Talks only to the server that served this page; no third-party requests.
"use strict";

(() => {
  const KEY_STORAGE = "stepedit.apiKey";
  const HISTORY_STORAGE = "stepedit.history";
  const HISTORY_LIMIT = 20;
  const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
  const ACCEPTED_TYPES = new Set(["image/png", "image/jpeg", "image/webp"]);
  const POLL_MS = 700;

  const $ = (id) => document.getElementById(id);
  const el = {
    form: $("edit-form"),
    file: $("image-file"),
    dropzone: $("dropzone"),
    preview: $("source-preview"),
    sourceName: $("source-name"),
    sourceChain: $("source-chain"),
    url: $("image-url"),
    clearImage: $("clear-image"),
    prompt: $("prompt"),
    negative: $("negative-prompt"),
    enhance: $("enhance-button"),
    enhanced: $("enhanced"),
    enhancedText: $("enhanced-text"),
    enhancedAccept: $("enhanced-accept"),
    enhancedDismiss: $("enhanced-dismiss"),
    guidance: $("guidance"),
    guidanceValue: $("guidance-value"),
    steps: $("steps"),
    stepsValue: $("steps-value"),
    seed: $("seed"),
    seedRandom: $("seed-random"),
    size: $("size"),
    numImages: $("num-images"),
    modelHint: $("model-hint"),
    reasoning: $("reasoning"),
    reasoningHint: $("reasoning-hint"),
    thinking: $("thinking"),
    reflection: $("reflection"),
    run: $("run-button"),
    cancel: $("cancel-button"),
    progress: $("progress"),
    progressText: $("progress-text"),
    error: $("error"),
    serverStatus: $("server-status"),
    resultPanel: $("result-panel"),
    result: $("result"),
    resultEmpty: $("result-empty"),
    compare: $("compare"),
    before: $("compare-before"),
    after: $("compare-after"),
    afterWrap: $("compare-after-wrap"),
    slider: $("compare-slider"),
    caption: $("compare-caption"),
    sideBySide: $("side-by-side"),
    outputs: $("outputs"),
    promptUsed: $("prompt-used"),
    history: $("history"),
    historyClear: $("history-clear"),
    keyButton: $("api-key-button"),
    keyDialog: $("key-dialog"),
    keyForm: $("key-form"),
    keyInput: $("api-key"),
    keyReason: $("key-reason"),
    keyForget: $("key-forget"),
    keyCancel: $("key-cancel"),
    codeButton: $("code-button"),
    codeDialog: $("code-dialog"),
    codeFlavour: $("code-flavour"),
    codeText: $("code-text"),
    codeNotes: $("code-notes"),
    codeCopy: $("code-copy"),
    codeClose: $("code-close"),
    codeStatus: $("code-status"),
  };

  const state = {
    file: null, // File chosen by picker or drop, or a result taken as the next source
    fileUnreadable: false, // the browser could not decode it: not worth uploading
    sourceUrl: null, // object URL (file) or the pasted URL, shown as "before"
    // Where the source came from when it is an earlier result: {root, parent, step, url}, the
    // chain the next edit continues. null for an uploaded file or a pasted URL (a new chain).
    lineage: null,
    jobId: null,
    abort: null, // AbortController of the running job's requests
    resultUrls: [], // object URLs of fetched outputs, revoked on the next run
    paramsTouched: false, // the user set guidance/steps/size: the server's defaults stay out
    currentEntry: null, // the history entry whose results are shown
  };

  // ---------- storage ----------

  function readStorage(key, fallback) {
    try {
      const raw = localStorage.getItem(key);
      return raw === null ? fallback : JSON.parse(raw);
    } catch {
      return fallback;
    }
  }

  function writeStorage(key, value) {
    try {
      localStorage.setItem(key, JSON.stringify(value));
      return true;
    } catch {
      return false; // quota or private mode: the page keeps working without persistence
    }
  }

  function apiKey() {
    return readStorage(KEY_STORAGE, "") || "";
  }

  // ---------- HTTP ----------

  class ApiError extends Error {
    constructor(status, code, message, param) {
      super(message || code || `HTTP ${status}`);
      this.status = status;
      this.code = code || "";
      this.param = param || null;
    }
  }

  function authHeaders(extra) {
    const headers = new Headers(extra || {});
    const key = apiKey();
    if (key) headers.set("Authorization", `Bearer ${key}`);
    return headers;
  }

  async function errorFromResponse(response) {
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    const err = body && typeof body.error === "object" && body.error ? body.error : null;
    if (err) return new ApiError(response.status, err.code || err.type, err.message, err.param);
    if (body && body.detail) {
      // FastAPI's own validation errors: {detail: [{loc, msg}]} or {detail: "text"}
      if (Array.isArray(body.detail)) {
        const first = body.detail[0] || {};
        const param = (first.loc || []).filter((part) => part !== "body").join(".") || null;
        const text = body.detail.map((d) => d.msg).join("; ");
        return new ApiError(response.status, "", text, param);
      }
      return new ApiError(response.status, "", String(body.detail));
    }
    return new ApiError(response.status, "", response.statusText);
  }

  async function api(path, options = {}) {
    let response;
    try {
      response = await fetch(path, { ...options, headers: authHeaders(options.headers) });
    } catch (e) {
      if (e.name === "AbortError") throw e;
      throw new ApiError(0, "network", "");
    }
    if (!response.ok) throw await errorFromResponse(response);
    return response;
  }

  async function apiJson(path, options) {
    return (await api(path, options)).json();
  }

  // ---------- messages ----------

  const MESSAGES = {
    payload_too_large: "The image is too large for this server. Try a smaller file.",
    unsupported_media_type: "That file is not a supported image. Use a PNG, JPEG or WebP file.",
    image_fetch_failed: "The image URL could not be fetched. Make sure it is a public image URL.",
    unauthorized: "This server requires a valid API key.",
    quota_exceeded: "The quota for this API key is used up. Try again later.",
    queue_full: "The server is busy: its queue is full. Try again in a moment.",
    service_unavailable: "The server is not ready yet. Try again in a moment.",
    content_filtered: "The result was withheld by the content filter. Try another instruction.",
    not_found: "That job no longer exists on the server.",
    network: "Could not reach the server. Check your connection and try again.",
  };

  // Each request field the form sets: the control to mark and focus, and its error slot (next
  // to the control). Errors naming no field, or one the form has no control for, go under Run.
  const FIELDS = {
    image: { input: el.file, group: el.dropzone.closest("fieldset"), error: $("image-error") },
    prompt: { input: el.prompt, error: $("prompt-error") },
    negative_prompt: { input: el.negative, error: $("negative-prompt-error") },
    guidance_scale: { input: el.guidanceValue, error: $("guidance-error") },
    num_inference_steps: { input: el.stepsValue, error: $("steps-error") },
    seed: { input: el.seed, error: $("seed-error") },
    size_level: { input: el.size, error: $("size-error") },
    num_images: { input: el.numImages, error: $("num-images-error") },
    enable_thinking: { input: el.thinking, group: el.reasoning, error: $("reasoning-error") },
    enable_reflection: { input: el.reflection, group: el.reasoning, error: $("reasoning-error") },
  };
  const IMAGE_CODES = new Set(["payload_too_large", "unsupported_media_type", "image_fetch_failed"]);

  // The form field an API error concerns: its `param` ("guidance_scale", "image", "body.seed"),
  // or the image for errors about the upload itself, which may come without one (a body over
  // the size limit is refused before it is parsed).
  function fieldOf(err) {
    const param = String(err.param || "").split(".").pop().replace(/\[\]$/, "");
    if (FIELDS[param]) return param;
    if (IMAGE_CODES.has(err.code) || err.status === 413 || err.status === 415) return "image";
    return null;
  }

  function describeError(err) {
    const code = err.code || "";
    const detail = err.message && err.message !== code ? err.message : "";
    let text = MESSAGES[code];
    if (!text) {
      if (/nsfw|filter|safety|moderat/i.test(code)) text = MESSAGES.content_filtered;
      else if (err.status === 413) text = MESSAGES.payload_too_large;
      else if (err.status === 415) text = MESSAGES.unsupported_media_type;
      else if (err.status === 401 || err.status === 403) text = MESSAGES.unauthorized;
      else if (err.status === 429) text = MESSAGES.queue_full;
      else if (err.status === 503) text = MESSAGES.service_unavailable;
      else if (err.status === 400 || err.status === 422 || code === "invalid_request")
        text = "The server rejected the request.";
      else text = "Something went wrong.";
    }
    if (code === "network") return text;
    return detail && !text.includes(detail) ? `${text} (${detail})` : text;
  }

  // Beside its field the message need not name the field again: "guidance_scale: Input should
  // be ..." reads "Input should be ...".
  function describeFieldError(err) {
    if (MESSAGES[err.code] || err.status === 413 || err.status === 415) return describeError(err);
    const message = String(err.message || "").trim();
    const param = String(err.param || "");
    const bare = param && message.startsWith(`${param}:`) ? message.slice(param.length + 1) : message;
    const text = bare.trim() || "This value was refused by the server.";
    return `${text.charAt(0).toUpperCase()}${text.slice(1)}`;
  }

  // One message at a time: next to its field when it concerns one, else under Run. Either way
  // it is brought into view, and a field's control gets the focus.
  function showError(text, field) {
    clearError();
    const target = field && FIELDS[field];
    if (!target) {
      el.error.textContent = text;
      el.error.hidden = false;
      revealIfHidden(el.error);
      return;
    }
    target.error.textContent = text;
    target.error.hidden = false;
    target.input.setAttribute("aria-invalid", "true");
    describeBy(target.input, target.error.id, true);
    (target.group || target.input.closest(".param, .group, .param-pair > div") || target.input)
      .scrollIntoView({ block: "center" });
    target.input.focus({ preventScroll: true });
  }

  function clearError() {
    el.error.textContent = "";
    el.error.hidden = true;
    for (const target of Object.values(FIELDS)) {
      target.error.textContent = "";
      target.error.hidden = true;
      target.input.removeAttribute("aria-invalid");
      describeBy(target.input, target.error.id, false);
    }
  }

  function describeBy(input, id, on) {
    const ids = new Set((input.getAttribute("aria-describedby") || "").split(" ").filter(Boolean));
    if (on) ids.add(id);
    else ids.delete(id);
    if (ids.size) input.setAttribute("aria-describedby", [...ids].join(" "));
    else input.removeAttribute("aria-describedby");
  }

  function revealIfHidden(node) {
    const rect = node.getBoundingClientRect();
    if (rect.top < 0 || rect.bottom > window.innerHeight) node.scrollIntoView({ block: "center" });
  }

  function reportError(err) {
    if (err && err.name === "AbortError") return;
    const apiErr = err instanceof ApiError ? err : new ApiError(0, "", String(err && err.message));
    if (apiErr.status === 401 || apiErr.code === "unauthorized") {
      const hadKey = Boolean(apiKey());
      showError(
        hadKey
          ? "The API key was rejected. Enter a valid key, then run again."
          : "This server requires an API key. Enter your key, then run again.",
      );
      openKeyDialog(hadKey ? "The saved API key was rejected by this server." : null);
      return;
    }
    const field = fieldOf(apiErr);
    showError(field ? describeFieldError(apiErr) : describeError(apiErr), field);
  }

  // ---------- source image ----------

  function setSourceFile(file, lineage = null) {
    clearError();
    if (!file) return;
    if (file.type && !ACCEPTED_TYPES.has(file.type)) {
      resetSource();
      showError(`"${file.name}" is not a supported image. Use a PNG, JPEG or WebP file.`, "image");
      return;
    }
    resetSource();
    state.file = file;
    state.sourceUrl = URL.createObjectURL(file);
    el.url.value = "";
    el.preview.src = state.sourceUrl;
    el.preview.alt = lineage ? `Source: the result of step ${lineage.step - 1}` : `Selected image: ${file.name}`;
    el.preview.hidden = false;
    el.sourceName.textContent = `${file.name} · ${formatBytes(file.size)}`;
    el.sourceName.hidden = false;
    setLineage(lineage);
  }

  function setSourceUrl(url) {
    resetSource();
    el.url.value = url;
    if (!url) return;
    // Shown only because the user pasted it; the edit itself fetches it server side.
    state.sourceUrl = url;
    el.preview.src = url;
    el.preview.alt = "Image at the pasted URL";
    el.preview.hidden = false;
  }

  function resetSource() {
    if (state.file && state.sourceUrl) URL.revokeObjectURL(state.sourceUrl);
    state.file = null;
    state.fileUnreadable = false;
    state.sourceUrl = null;
    el.preview.hidden = true;
    el.preview.removeAttribute("src");
    el.sourceName.hidden = true;
    el.sourceName.textContent = "";
    setLineage(null);
  }

  function setLineage(lineage) {
    state.lineage = lineage;
    el.sourceChain.hidden = !lineage;
    el.sourceChain.textContent = lineage
      ? `Step ${lineage.step} of a chain: this edit starts from the result of step ${lineage.step - 1}.`
      : "";
  }

  el.preview.addEventListener("error", () => {
    if (!el.preview.getAttribute("src")) return;
    el.preview.hidden = true;
    if (state.file) {
      state.fileUnreadable = true;
      showError(
        `"${state.file.name}" could not be read as an image. Use a PNG, JPEG or WebP file.`,
        "image",
      );
    }
  });

  function formatBytes(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KB`;
    return `${(n / 1024 / 1024).toFixed(1)} MB`;
  }

  el.file.addEventListener("change", () => setSourceFile(el.file.files[0]));
  el.url.addEventListener("change", () => setSourceUrl(el.url.value.trim()));
  el.clearImage.addEventListener("click", () => {
    el.file.value = "";
    setSourceUrl("");
    clearError();
  });

  ["dragenter", "dragover"].forEach((type) =>
    el.dropzone.addEventListener(type, (e) => {
      e.preventDefault();
      el.dropzone.classList.add("dragging");
    }),
  );
  ["dragleave", "drop"].forEach((type) =>
    el.dropzone.addEventListener(type, () => el.dropzone.classList.remove("dragging")),
  );
  el.dropzone.addEventListener("drop", (e) => {
    e.preventDefault();
    const file = e.dataTransfer && e.dataTransfer.files[0];
    if (file) {
      el.file.value = "";
      setSourceFile(file);
      return;
    }
    const text = e.dataTransfer && e.dataTransfer.getData("text/uri-list");
    if (text) setSourceUrl(text.split("\n")[0].trim());
  });
  // Dropping a file elsewhere on the page must not navigate away from it.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());

  function readAsDataUrl(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(file);
    });
  }

  // ---------- parameters ----------

  function linkRange(range, number) {
    range.addEventListener("input", () => (number.value = range.value));
    number.addEventListener("input", () => {
      if (number.value !== "") range.value = number.value;
    });
    number.addEventListener("change", () => {
      const clamped = Math.min(Number(number.max), Math.max(Number(number.min), Number(number.value)));
      number.value = range.value = Number.isFinite(clamped) ? clamped : range.value;
    });
  }
  linkRange(el.guidance, el.guidanceValue);
  linkRange(el.steps, el.stepsValue);

  // Once the user sets one of these, the model's defaults (from /health) no longer replace it.
  [el.guidance, el.guidanceValue, el.steps, el.stepsValue, el.size].forEach((control) =>
    ["input", "change"].forEach((type) =>
      control.addEventListener(type, () => (state.paramsTouched = true)),
    ),
  );

  el.seedRandom.addEventListener("click", () => {
    el.seed.value = "";
    el.seed.focus();
  });

  document.querySelectorAll(".chip").forEach((chip) =>
    chip.addEventListener("click", () => {
      el.prompt.value = chip.textContent.trim();
      el.prompt.focus();
    }),
  );

  function readParams() {
    const seedText = el.seed.value.trim();
    const params = {
      prompt: el.prompt.value.trim(),
      negative_prompt: el.negative.value.trim(),
      guidance_scale: Number(el.guidanceValue.value),
      num_inference_steps: Number(el.stepsValue.value),
      seed: seedText === "" || Number(seedText) < 0 ? null : Number(seedText),
      size_level: Number(el.size.value),
      num_images: Number(el.numImages.value),
    };
    if (!el.reasoning.disabled) {
      if (el.thinking.checked) params.enable_thinking = true;
      if (el.reflection.checked) params.enable_reflection = true;
    }
    return params;
  }

  function setGuidance(value) {
    el.guidance.value = el.guidanceValue.value = value;
  }

  function setSteps(value) {
    el.steps.value = el.stepsValue.value = value;
  }

  function applyParams(p) {
    el.prompt.value = p.prompt || "";
    el.negative.value = p.negative_prompt || "";
    if (p.guidance_scale != null) setGuidance(p.guidance_scale);
    if (p.num_inference_steps != null) setSteps(p.num_inference_steps);
    el.seed.value = p.seed == null ? "" : p.seed;
    if (p.size_level) el.size.value = String(p.size_level);
    if (p.num_images) el.numImages.value = String(p.num_images);
    el.thinking.checked = Boolean(p.enable_thinking);
    el.reflection.checked = Boolean(p.enable_reflection);
    state.paramsTouched = true;
  }

  // The first problem of the form, as {field, text}, or null.
  function validate(params) {
    if (!state.file && !el.url.value.trim())
      return { field: "image", text: "Choose an image or paste a public image URL." };
    if (state.fileUnreadable)
      return {
        field: "image",
        text: `"${state.file.name}" could not be read as an image. Use a PNG, JPEG or WebP file.`,
      };
    if (!params.prompt) return { field: "prompt", text: "Write an instruction describing the edit." };
    if (!(params.guidance_scale >= 0 && params.guidance_scale <= 20))
      return { field: "guidance_scale", text: "Guidance scale must be between 0 and 20." };
    const steps = params.num_inference_steps;
    if (!(Number.isInteger(steps) && steps >= 1 && steps <= 50))
      return { field: "num_inference_steps", text: "Steps must be a whole number between 1 and 50." };
    if (params.seed != null && !(Number.isInteger(params.seed) && params.seed <= 2147483647))
      return {
        field: "seed",
        text: "Seed must be a whole number up to 2147483647, or empty for random.",
      };
    return null;
  }

  // ---------- prompt enhancer ----------

  el.enhance.addEventListener("click", async () => {
    clearError();
    const prompt = el.prompt.value.trim();
    if (!prompt) {
      showError("Write an instruction first, then enhance it.", "prompt");
      return;
    }
    const body = { prompt };
    try {
      if (state.file) body.image = await readAsDataUrl(state.file);
      else if (el.url.value.trim()) body.image = el.url.value.trim();
    } catch {
      // enhancing without the image still helps
    }
    el.enhance.disabled = true;
    el.enhance.setAttribute("aria-busy", "true");
    el.progressText.textContent = "Enhancing the instruction…";
    try {
      const data = await apiJson("/v1/prompt/enhance", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      el.enhancedText.textContent = data.enhanced_prompt || data.prompt || prompt;
      el.enhanced.hidden = false;
      el.progressText.textContent = "Enhanced instruction ready.";
      el.enhancedAccept.focus();
    } catch (err) {
      el.progressText.textContent = "";
      if (err instanceof ApiError && (err.status === 404 || err.status === 405))
        showError("The Prompt Enhancer is not available on this server.");
      else reportError(err);
    } finally {
      el.enhance.disabled = false;
      el.enhance.removeAttribute("aria-busy");
    }
  });
  el.enhancedAccept.addEventListener("click", () => {
    el.prompt.value = el.enhancedText.textContent;
    el.enhanced.hidden = true;
    el.prompt.focus();
  });
  el.enhancedDismiss.addEventListener("click", () => {
    el.enhanced.hidden = true;
    el.prompt.focus();
  });

  // ---------- job submission and progress ----------

  // One JSON body for both sources (the contract's "JSON with image as data URI/URL"): typed
  // numbers and booleans, no form-field coercion on the server.
  async function buildRequest(params) {
    const image = state.file ? await readAsDataUrl(state.file) : el.url.value.trim();
    return {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ ...nativeFields(params), image }),
    };
  }

  // The native API's fields for the form: unset values left out (the server's defaults).
  function nativeFields(params) {
    const fields = { ...params };
    for (const name of Object.keys(fields)) if (fields[name] === null) delete fields[name];
    if (fields.negative_prompt === "") delete fields.negative_prompt;
    return fields;
  }

  function setRunning(running) {
    el.run.disabled = running;
    el.run.textContent = running ? "Running…" : "Run";
    el.cancel.hidden = !running;
    el.form.setAttribute("aria-busy", running ? "true" : "false");
  }

  function showProgress(progress, status) {
    const step = progress && Number(progress.step);
    const total = progress && Number(progress.total_steps);
    el.progress.hidden = false;
    if (total > 0) {
      el.progress.max = total;
      el.progress.value = Math.min(step || 0, total);
    } else {
      el.progress.removeAttribute("value"); // indeterminate
    }
    let text;
    if (status === "queued") text = "Queued…";
    else if (total > 0) {
      const stage = progress.stage && progress.stage !== "denoise" ? ` (${progress.stage})` : "";
      text = `Step ${Math.min(step || 0, total)} of ${total}${stage}`;
    } else text = status === "processing" ? "Processing…" : "Submitting…";
    el.progressText.textContent = text;
  }

  // Server-sent events read through fetch so the Authorization header can be sent
  // (EventSource cannot). Resolves when the stream ends; the caller then polls.
  async function streamEvents(jobId, signal, onJob, onProgress) {
    const response = await fetch(`/v1/jobs/${encodeURIComponent(jobId)}/events`, {
      headers: authHeaders({ Accept: "text/event-stream" }),
      signal,
    });
    const type = response.headers.get("Content-Type") || "";
    if (!response.ok || !response.body || !type.includes("text/event-stream")) return;
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = block
          .split("\n")
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, ""))
          .join("\n");
        if (!data) continue;
        let payload;
        try {
          payload = JSON.parse(data);
        } catch {
          continue;
        }
        if (payload && typeof payload.status === "string" && payload.id) {
          onJob(payload);
          if (TERMINAL.has(payload.status)) {
            reader.cancel().catch(() => {});
            return;
          }
        } else if (payload && payload.progress) {
          onProgress(payload.progress, payload.status);
          if (payload.status && TERMINAL.has(payload.status)) {
            reader.cancel().catch(() => {});
            return;
          }
        } else if (payload && payload.total_steps !== undefined) {
          onProgress(payload, "processing");
        }
      }
    }
  }

  async function followJob(jobId, signal) {
    let last = null;
    const onJob = (job) => {
      last = job;
      showProgress(job.progress, job.status);
    };
    try {
      await streamEvents(jobId, signal, onJob, (p, s) => showProgress(p, s || "processing"));
    } catch (e) {
      if (e.name === "AbortError") throw e;
      // stream unsupported or broken: polling below carries on
    }
    if (last && TERMINAL.has(last.status) && last.status !== "succeeded") return last;
    for (;;) {
      const job = await apiJson(`/v1/jobs/${encodeURIComponent(jobId)}`, { signal });
      onJob(job);
      if (TERMINAL.has(job.status)) return job;
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
  }

  el.form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clearError();
    const params = readParams();
    const problem = validate(params);
    if (problem) {
      showError(problem.text, problem.field);
      return;
    }
    const controller = new AbortController();
    state.abort = controller;
    setRunning(true);
    showProgress(null, "submitting");
    const lineage = state.lineage;
    let source;
    if (lineage) source = { kind: "result", url: lineage.url, name: state.file.name };
    else if (state.file) source = { kind: "file", name: state.file.name };
    else source = { kind: "url", url: el.url.value.trim() };
    const beforeUrl = state.sourceUrl;
    try {
      const created = await apiJson("/v1/jobs", {
        ...(await buildRequest(params)),
        signal: controller.signal,
      });
      state.jobId = created.id;
      showProgress(created.progress, created.status);
      const job = TERMINAL.has(created.status)
        ? created
        : await followJob(created.id, controller.signal);
      const chain = lineage
        ? { root: lineage.root, parent: lineage.parent, step: lineage.step }
        : { root: job.id, parent: null, step: 1 };
      await finishJob(job, params, source, beforeUrl, chain);
    } catch (err) {
      el.progress.hidden = true;
      el.progressText.textContent = "";
      reportError(err);
    } finally {
      state.abort = null;
      state.jobId = null;
      setRunning(false);
    }
  });

  el.cancel.addEventListener("click", async () => {
    const jobId = state.jobId;
    if (state.abort) state.abort.abort();
    el.progress.hidden = true;
    el.progressText.textContent = "Canceled.";
    if (!jobId) return;
    try {
      await api(`/v1/jobs/${encodeURIComponent(jobId)}/cancel`, { method: "POST" });
    } catch (err) {
      reportError(err);
    }
  });

  async function finishJob(job, params, source, beforeUrl, chain) {
    if (job.status === "canceled") {
      el.progress.hidden = true;
      el.progressText.textContent = "Canceled.";
      return;
    }
    if (job.status === "failed") {
      el.progress.hidden = true;
      el.progressText.textContent = "";
      const err = job.error || {};
      showError(describeError(new ApiError(0, err.code, err.message)));
      return;
    }
    showProgress(
      { step: job.progress && job.progress.total_steps, total_steps: job.progress && job.progress.total_steps },
      "succeeded",
    );
    el.progressText.textContent = `Done${timing(job)}.`;
    const entry = { id: job.id, chain };
    const shown = await showOutputs(job, beforeUrl, entry);
    bringResultIntoView();
    await addHistory(job, params, source, shown, chain);
  }

  // The form is long: after Run the result panel is above (desktop, form scrolled) or below
  // (phone, one column) what is on screen. Bring its top into view unless it already is.
  function bringResultIntoView() {
    const top = el.resultPanel.getBoundingClientRect().top;
    if (top < 0 || top > window.innerHeight / 3) el.resultPanel.scrollIntoView({ block: "start" });
  }

  function timing(job) {
    const ms = job.timings && (job.timings.inference_ms || job.timings.total_ms);
    return ms ? ` in ${(ms / 1000).toFixed(1)} s` : "";
  }

  // ---------- results ----------

  async function fetchImage(url) {
    const response = await api(url);
    const blob = await response.blob();
    return URL.createObjectURL(blob);
  }

  function extensionFor(url, fallback) {
    const match = /\.(png|jpe?g|webp)(?:$|\?)/i.exec(url || "");
    return match ? match[1].toLowerCase() : fallback;
  }

  // `entry`: {id, chain} of the edit shown, so that "Edit this result" continues its chain.
  async function showOutputs(job, beforeUrl, entry) {
    state.resultUrls.forEach((u) => URL.revokeObjectURL(u));
    state.resultUrls = [];
    state.currentEntry = entry;
    el.outputs.replaceChildren();
    const outputs = job.outputs || [];
    const shown = [];
    let filtered = 0;
    for (const [i, output] of outputs.entries()) {
      const item = document.createElement("li");
      item.className = "output";
      if (output.nsfw) {
        filtered += 1;
        item.append(textNode("p", "Withheld by the content filter.", "hint"));
        el.outputs.append(item);
        continue;
      }
      let objectUrl;
      try {
        objectUrl = await fetchImage(output.url);
      } catch (err) {
        item.append(textNode("p", `Image ${i + 1} could not be loaded: ${describeError(err)}`, "hint"));
        el.outputs.append(item);
        continue;
      }
      state.resultUrls.push(objectUrl);
      shown.push({ index: i, objectUrl, seed: output.seed, url: output.url });
      item.append(outputCard(job, i, output, objectUrl, entry));
      el.outputs.append(item);
    }
    el.result.hidden = false;
    el.resultEmpty.hidden = true;
    const used = job.prompt_used;
    el.promptUsed.hidden = !used || used === (job.request && job.request.prompt);
    el.promptUsed.textContent = used ? `Instruction the model used: ${used}` : "";
    if (shown.length) selectForCompare(shown[0].objectUrl, beforeUrl, 1, outputs.length);
    else el.compare.hidden = true;
    if (filtered) showError(MESSAGES.content_filtered);
    renderHistory();
    return shown;
  }

  function outputCard(job, i, output, objectUrl, entry) {
    const card = document.createDocumentFragment();
    const thumbButton = document.createElement("button");
    thumbButton.type = "button";
    thumbButton.className = "thumb";
    thumbButton.setAttribute("aria-label", `Compare image ${i + 1} with the source`);
    const img = document.createElement("img");
    img.src = objectUrl;
    img.alt = `Edited image ${i + 1}`;
    img.className = "result-image";
    thumbButton.append(img);
    thumbButton.addEventListener("click", () =>
      selectForCompare(objectUrl, el.before.getAttribute("src"), i + 1, (job.outputs || []).length),
    );
    card.append(thumbButton);

    const meta = document.createElement("div");
    meta.className = "output-meta";
    if (output.seed !== undefined && output.seed !== null) {
      meta.append(textNode("span", `Seed ${output.seed}`, "seed-used"));
      const reuse = document.createElement("button");
      reuse.type = "button";
      reuse.className = "secondary small";
      reuse.textContent = "Reuse seed";
      reuse.setAttribute("aria-label", `Reuse seed ${output.seed}`);
      reuse.addEventListener("click", () => {
        el.seed.value = output.seed;
        el.progressText.textContent = `Seed fixed to ${output.seed}.`;
        el.seed.focus();
      });
      meta.append(reuse);
    }
    const download = document.createElement("a");
    download.href = objectUrl;
    download.className = "button small";
    download.download = `stepedit-${job.id}-${i + 1}.${extensionFor(output.url, "png")}`;
    download.textContent = "Download";
    download.setAttribute("aria-label", `Download image ${i + 1}`);
    meta.append(download);
    const next = document.createElement("button");
    next.type = "button";
    next.className = "small";
    next.textContent = "Edit this result";
    next.setAttribute("aria-label", `Edit image ${i + 1} further`);
    next.addEventListener("click", () => editResult(job, i, output, objectUrl, entry));
    meta.append(next);
    card.append(meta);
    return card;
  }

  // The output becomes the next source (uploaded again as a file, so the edit does not depend
  // on the server fetching its own URL); the next edit is the following step of its chain.
  async function editResult(job, i, output, objectUrl, entry) {
    let blob;
    try {
      blob = await (await fetch(objectUrl)).blob();
    } catch (err) {
      reportError(err);
      return;
    }
    const extension = extensionFor(output.url, "png");
    const type = blob.type || `image/${extension === "jpg" ? "jpeg" : extension}`;
    const file = new File([blob], `stepedit-${job.id}-${i + 1}.${extension}`, { type });
    const chain = (entry && entry.chain) || { root: job.id, parent: null, step: 1 };
    el.file.value = "";
    setSourceFile(file, { root: chain.root, parent: job.id, step: chain.step + 1, url: output.url });
    el.prompt.value = "";
    el.enhanced.hidden = true;
    el.progressText.textContent = `The result is the new source (step ${chain.step + 1}): describe the next edit.`;
    el.dropzone.closest("fieldset").scrollIntoView({ block: "start" });
    el.prompt.focus({ preventScroll: true });
  }

  function textNode(tag, text, className) {
    const node = document.createElement(tag);
    node.textContent = text;
    if (className) node.className = className;
    return node;
  }

  function selectForCompare(afterUrl, beforeUrl, index, total) {
    el.compare.hidden = false;
    el.after.src = afterUrl;
    if (beforeUrl) {
      el.before.src = beforeUrl;
      el.before.hidden = false;
      el.compare.classList.remove("no-before");
    } else {
      el.before.removeAttribute("src");
      el.compare.classList.add("no-before");
    }
    el.caption.textContent =
      total > 1 ? `Image ${index} of ${total}: source on the left, edit on the right.` : "Source on the left, edit on the right.";
    updateSlider();
  }

  function updateSlider() {
    el.afterWrap.style.clipPath = el.sideBySide.checked ? "" : `inset(0 0 0 ${el.slider.value}%)`;
    el.afterWrap.style.setProperty("--split", `${el.slider.value}%`);
  }
  el.slider.addEventListener("input", updateSlider);
  el.sideBySide.addEventListener("change", () => {
    el.compare.classList.toggle("side-by-side", el.sideBySide.checked);
    updateSlider();
  });

  // ---------- history ----------

  function makeThumb(objectUrl) {
    return new Promise((resolve) => {
      const img = new Image();
      img.onload = () => {
        const scale = 96 / Math.max(img.naturalWidth, img.naturalHeight, 1);
        const canvas = document.createElement("canvas");
        canvas.width = Math.max(1, Math.round(img.naturalWidth * scale));
        canvas.height = Math.max(1, Math.round(img.naturalHeight * scale));
        canvas.getContext("2d").drawImage(img, 0, 0, canvas.width, canvas.height);
        resolve(canvas.toDataURL("image/jpeg", 0.7));
      };
      img.onerror = () => resolve(null);
      img.src = objectUrl;
    });
  }

  // An entry: {id, at, params, source, outputs, thumb, chain: {root, parent, step}}; the
  // entries of one chain share its first edit's id as `root`.
  async function addHistory(job, params, source, shown, chain) {
    const entry = {
      id: job.id,
      at: job.created_at || new Date().toISOString(),
      params: { ...params, seed: job.seed ?? (shown.length ? shown[0].seed : params.seed) },
      source,
      outputs: shown.map((s) => ({ url: s.url, seed: s.seed })),
      thumb: shown.length ? await makeThumb(shown[0].objectUrl) : null,
      chain,
    };
    const entries = [entry, ...readStorage(HISTORY_STORAGE, []).filter((h) => h.id !== job.id)];
    entries.length = Math.min(entries.length, HISTORY_LIMIT);
    while (!writeStorage(HISTORY_STORAGE, entries) && entries.length > 1) entries.pop();
    renderHistory();
  }

  // Newest chain first (entries are stored newest first); the steps of a chain in order, and
  // steps redone from an earlier one in the order they were made.
  function groupChains(entries) {
    const chains = new Map();
    entries.forEach((entry, age) => {
      const root = (entry.chain && entry.chain.root) || entry.id;
      if (!chains.has(root)) chains.set(root, []);
      chains.get(root).push({ entry, age });
    });
    const stepOf = (entry) => (entry.chain && entry.chain.step) || 1;
    return [...chains.values()].map((steps) =>
      steps.sort((a, b) => stepOf(a.entry) - stepOf(b.entry) || b.age - a.age).map((s) => s.entry),
    );
  }

  function renderHistory() {
    const entries = readStorage(HISTORY_STORAGE, []);
    el.history.replaceChildren();
    el.historyClear.hidden = entries.length === 0;
    if (!entries.length) {
      el.history.append(textNode("li", "No edits yet.", "hint"));
      return;
    }
    for (const steps of groupChains(entries)) {
      const isChain = steps.length > 1 || ((steps[0].chain && steps[0].chain.step) || 1) > 1;
      if (!isChain) {
        const li = document.createElement("li");
        li.append(historyButton(steps[0], null));
        el.history.append(li);
        continue;
      }
      const li = document.createElement("li");
      li.className = "history-chain";
      const title = document.createElement("p");
      title.className = "chain-title";
      title.id = `chain-${steps[0].chain.root}`;
      title.textContent =
        steps.length > 1 ? `Chain of ${steps.length} edits` : "Chain of edits (1 step kept)";
      li.append(title);
      const list = document.createElement("ol");
      list.className = "chain-steps";
      list.setAttribute("aria-labelledby", title.id);
      for (const entry of steps) {
        const item = document.createElement("li");
        item.append(historyButton(entry, entry.chain.step));
        list.append(item);
      }
      li.append(list);
      el.history.append(li);
    }
  }

  function historyButton(entry, step) {
    const p = entry.params || {};
    const button = document.createElement("button");
    button.type = "button";
    button.className = step ? "history-item chain-step" : "history-item";
    if (state.currentEntry && state.currentEntry.id === entry.id)
      button.setAttribute("aria-current", step ? "step" : "true");
    if (entry.thumb) {
      const img = document.createElement("img");
      img.src = entry.thumb;
      img.alt = "";
      button.append(img);
    }
    const text = document.createElement("span");
    text.className = "history-text";
    if (step) text.append(textNode("span", `Step ${step}`, "step-label"));
    text.append(textNode("strong", p.prompt || "(no instruction)"));
    const when = new Date(entry.at);
    const details = [
      `guidance ${p.guidance_scale}`,
      `${p.num_inference_steps} steps`,
      `seed ${p.seed == null ? "random" : p.seed}`,
      `${p.size_level} px`,
      `n ${p.num_images}`,
    ];
    if (p.negative_prompt) details.push(`avoid: ${p.negative_prompt}`);
    text.append(textNode("span", details.join(" · "), "hint"));
    if (!Number.isNaN(when.getTime())) text.append(textNode("span", when.toLocaleString(), "hint"));
    button.append(text);
    button.setAttribute(
      "aria-label",
      step ? `Go back to step ${step}: ${p.prompt || ""}` : `Restore edit: ${p.prompt || ""}`,
    );
    button.addEventListener("click", () => restoreHistory(entry));
    return button;
  }

  // Back to an edit: its parameters, its source (for a chain step, the result it started from,
  // fetched again), and its results, whose "Edit this result" continues from that step.
  async function restoreHistory(entry) {
    clearError();
    el.progress.hidden = true;
    applyParams(entry.params || {});
    const source = entry.source || {};
    const chain = entry.chain || { root: entry.id, parent: null, step: 1 };
    let sourceNote = "";
    if (source.kind === "url" && source.url) {
      el.file.value = "";
      setSourceUrl(source.url);
    } else if (source.kind === "result" && source.url) {
      try {
        const blob = await (await api(source.url)).blob();
        const file = new File([blob], source.name || "source.png", { type: blob.type || "image/png" });
        el.file.value = "";
        setSourceFile(file, { ...chain, url: source.url });
      } catch {
        sourceNote = " Its source image has expired on the server.";
      }
    } else if (source.kind === "file") {
      sourceNote = ` Choose "${source.name}" again to run it on the same image.`;
    }
    el.progressText.textContent = `Parameters restored from history.${sourceNote}`;
    el.prompt.focus({ preventScroll: true });
    state.currentEntry = { id: entry.id, chain };
    renderHistory();
    if (!entry.outputs || !entry.outputs.length) return;
    try {
      await showOutputs(
        { id: entry.id, outputs: entry.outputs, request: entry.params },
        state.sourceUrl,
        { id: entry.id, chain },
      );
    } catch {
      // older results may have expired on the server; the parameters are what matters
    }
    if (!state.resultUrls.length)
      el.progressText.textContent = "Parameters restored; the result images have expired.";
    else bringResultIntoView();
  }

  el.historyClear.addEventListener("click", () => {
    writeStorage(HISTORY_STORAGE, []);
    renderHistory();
    el.progressText.textContent = "History cleared.";
  });

  // ---------- copy as curl / Python ----------

  // Per API flavour: the request the form makes, in that flavour's own field names and
  // ranges (src/stepedit/api/<flavour>/protocol.py). `image` is "file" (multipart upload),
  // "json" (a URL, or a data URI of the file, in the JSON body) or "json-or-file".
  const FLAVOURS = {
    native: {
      path: "/v1/jobs",
      encoding: "json-or-file",
      fields(p) {
        return nativeFields(p);
      },
      notes: () => [
        "Answers 202 with the job; follow it with GET /v1/jobs/{id} or its /events stream.",
      ],
    },
    wavespeed: {
      path: "/api/v3/wavespeed-ai/step1x-edit",
      encoding: "json",
      fields(p) {
        return withFlags(p, {
          prompt: p.prompt,
          ...(p.negative_prompt ? { negative_prompt: p.negative_prompt } : {}),
          seed: p.seed ?? -1,
          guidance_scale: p.guidance_scale,
          num_inference_steps: p.num_inference_steps,
          enable_sync_mode: true,
        });
      },
      notes: (p) => missing(p, ["size_level", "num_images"]),
    },
    openai_edits: {
      path: "/v1/images/edits",
      encoding: "file",
      fields(p) {
        return withFlags(p, {
          model: "step-1x-edit",
          prompt: p.prompt,
          ...(p.seed ? { seed: p.seed } : {}),
          steps: p.num_inference_steps,
          cfg_scale: p.guidance_scale,
          size: `${p.size_level}x${p.size_level}`,
          response_format: "url",
        });
      },
      notes(p) {
        const notes = missing(p, ["negative_prompt", "num_images"]);
        if (p.guidance_scale < 1 || p.guidance_scale > 10)
          notes.push(`cfg_scale must be 1–10 here; ${p.guidance_scale} is refused.`);
        if (p.prompt.length > 512) notes.push("The prompt is limited to 512 characters here.");
        if (p.seed === 0) notes.push("seed 0 means a random seed here.");
        notes.push("The result comes back at the working size, not the source's.");
        return notes;
      },
    },
    generations: {
      path: "/v1/images/generations",
      encoding: "json",
      fields(p) {
        return withFlags(p, {
          model: "stepfun-ai/step1x-edit",
          prompt: p.prompt,
          n: p.num_images,
          seed: p.seed ?? -1,
          steps: p.num_inference_steps,
          guidance_scale: p.guidance_scale,
          ...(p.negative_prompt ? { negative_prompt: p.negative_prompt } : {}),
          strength: 1.0,
          response_format: "url",
        });
      },
      notes(p) {
        const notes = missing(p, ["size_level"]);
        if (p.guidance_scale < 1 || p.guidance_scale > 10)
          notes.push(`guidance_scale must be 1–10 here; ${p.guidance_scale} is refused.`);
        notes.push("strength 1.0 as the playground edits (this API's default is 0.8).");
        return notes;
      },
    },
    reasoning: {
      path: "/v1/image/edit/",
      encoding: "json-or-file",
      fields(p) {
        return withFlags(p, {
          model: "step1x-edit",
          prompt: p.prompt,
          operation: "edit",
          steps: p.num_inference_steps,
          guidance_scale: p.guidance_scale,
          ...(p.negative_prompt ? { negative_prompt: p.negative_prompt } : {}),
          ...(p.seed != null ? { seed: p.seed } : {}),
          response_format: "url",
        });
      },
      notes: (p) => missing(p, ["size_level", "num_images"]),
    },
  };

  // The v1.2 switches, sent by every flavour when ticked (otherwise the model's default).
  function withFlags(p, fields) {
    if (p.enable_thinking) fields.enable_thinking = true;
    if (p.enable_reflection) fields.enable_reflection = true;
    return fields;
  }

  const NOT_IN_FLAVOUR = {
    size_level: (p) => p.size_level !== 1024 && `No size field: it edits at 1024 px, not ${p.size_level}.`,
    num_images: (p) => p.num_images !== 1 && `No n field: it makes one image, not ${p.num_images}.`,
    negative_prompt: (p) => p.negative_prompt && "No negative prompt field: it is left out.",
  };

  function missing(p, names) {
    return names.map((name) => NOT_IN_FLAVOUR[name](p)).filter(Boolean);
  }

  // What the code needs to know about the source image: a file (by name, or a placeholder
  // when none is chosen) or a URL.
  function codeImage() {
    const url = el.url.value.trim();
    if (!state.file && url) return { kind: "url", url };
    const name = state.file ? state.file.name : "photo.png";
    const type = (state.file && state.file.type) || "image/png";
    return { kind: "file", name, type, placeholder: !state.file };
  }

  function describeCall(flavourName) {
    const flavour = FLAVOURS[flavourName];
    const params = readParams();
    const image = codeImage();
    let encoding = flavour.encoding;
    if (encoding === "json-or-file") encoding = image.kind === "file" ? "file" : "json";
    const notes = flavour.notes(params);
    if (image.kind === "file" && image.placeholder)
      notes.unshift(`${image.name} stands for your image file.`);
    if (encoding === "file" && image.kind === "url")
      notes.unshift("This API takes an uploaded file: the URL is downloaded first.");
    return {
      url: `${location.origin}${flavour.path}`,
      encoding,
      fields: flavour.fields(params),
      image,
      hasKey: Boolean(apiKey()),
      isNative: flavourName === "native",
      notes,
    };
  }

  // POSIX shell single quotes: nothing inside is special.
  function shellQuote(text) {
    return `'${String(text).replace(/'/g, "'\\''")}'`;
  }

  function toCurl(call) {
    const lines = [];
    let imageFile = call.image.name;
    if (call.encoding === "file" && call.image.kind === "url") {
      imageFile = "source.png";
      lines.push(`curl -sSL -o ${imageFile} ${shellQuote(call.image.url)}`);
    }
    const command = [`curl -sS ${shellQuote(call.url)}`];
    if (call.hasKey) command.push(`-H "Authorization: Bearer $STEPEDIT_API_KEY"`);
    let heredoc = null;
    if (call.encoding === "file") {
      command.push(`-F ${shellQuote(`image=@${imageFile}`)}`);
      for (const [name, value] of Object.entries(call.fields))
        command.push(`--form-string ${shellQuote(`${name}=${String(value)}`)}`);
    } else {
      command.push(`-H 'Content-Type: application/json'`);
      const isFile = call.image.kind === "file";
      const marker = "__STEPEDIT_IMAGE__";
      const body = { ...call.fields, image: isFile ? marker : call.image.url };
      let json = JSON.stringify(body, null, 2);
      if (isFile) {
        // An unquoted here-document, so that the file is read into a data URI; everything
        // else in it is escaped ($, `, \ are the only characters it expands).
        json = json.replace(/[\\$`]/g, (c) => `\\${c}`);
        const encode = `$(base64 < ${shellQuote(call.image.name)} | tr -d '\\n')`;
        json = json.replace(`"${marker}"`, `"data:${call.image.type};base64,${encode}"`);
        command.push("--data-binary @- <<JSON");
      } else {
        command.push("--data-binary @- <<'JSON'");
      }
      heredoc = `${json}\nJSON`;
    }
    lines.push(command.join(" \\\n  "));
    if (heredoc) lines[lines.length - 1] += `\n${heredoc}`;
    if (call.isNative) {
      const auth = call.hasKey ? ` -H "Authorization: Bearer $STEPEDIT_API_KEY"` : "";
      lines.push(`# then, until its "status" is "succeeded": curl -sS${auth} ${location.origin}/v1/jobs/JOB_ID`);
    }
    return lines.join("\n");
  }

  // A Python literal for a JSON value (JSON's strings and numbers are Python's).
  function pyLiteral(value) {
    if (value === true) return "True";
    if (value === false) return "False";
    if (value === null || value === undefined) return "None";
    return JSON.stringify(value);
  }

  function pyDict(entries, indent) {
    const pad = " ".repeat(indent);
    const items = entries.map(([name, value]) => `${pad}    ${JSON.stringify(name)}: ${value},`);
    return `{\n${items.join("\n")}\n${pad}}`;
  }

  function toPython(call) {
    const isJsonWithFile = call.encoding === "json" && call.image.kind === "file";
    const stdlib = [
      ...(isJsonWithFile ? ["base64"] : []),
      ...(call.hasKey ? ["os"] : []),
      ...(call.isNative ? ["time"] : []),
    ];
    const imports = [...stdlib.map((name) => `import ${name}`), ...(stdlib.length ? [""] : []), "import httpx"];
    const setup = [
      call.hasKey
        ? 'HEADERS = {"Authorization": f"Bearer {os.environ[\'STEPEDIT_API_KEY\']}"}'
        : "HEADERS = {}",
    ];
    const args = [`    ${JSON.stringify(call.url)},`, "    headers=HEADERS,"];
    if (call.encoding === "file") {
      if (call.image.kind === "url") {
        setup.push(`image = httpx.get(${JSON.stringify(call.image.url)}, follow_redirects=True).content`);
        args.push('    files={"image": ("source.png", image)},');
      } else {
        args.push(`    files={"image": open(${JSON.stringify(call.image.name)}, "rb")},`);
      }
      const data = Object.entries(call.fields).map(([n, v]) => [n, JSON.stringify(String(v))]);
      args.push(`    data=${pyDict(data, 4)},`);
    } else {
      const entries = Object.entries(call.fields).map(([n, v]) => [n, pyLiteral(v)]);
      if (isJsonWithFile) {
        setup.push(
          `with open(${JSON.stringify(call.image.name)}, "rb") as f:`,
          "    image = base64.b64encode(f.read()).decode()",
        );
        entries.push(["image", `f"data:${call.image.type};base64,{image}"`]);
      } else {
        entries.push(["image", JSON.stringify(call.image.url)]);
      }
      args.push(`    json=${pyDict(entries, 4)},`);
    }
    args.push("    timeout=600,");
    const post = ["response = httpx.post(", ...args, ")", "response.raise_for_status()"];
    const lines = [...imports, "", ...setup, "", ...post];
    if (call.isNative) {
      lines.push(
        "job = response.json()",
        'while job["status"] not in ("succeeded", "failed", "canceled"):',
        "    time.sleep(1)",
        `    job = httpx.get(f"${location.origin}/v1/jobs/{job['id']}", headers=HEADERS).json()`,
        "print(job)",
      );
    } else {
      lines.push("print(response.json())");
    }
    return lines.join("\n");
  }

  function codeLanguage() {
    const checked = el.codeDialog.querySelector('input[name="code-language"]:checked');
    return checked ? checked.value : "curl";
  }

  function renderCode() {
    const call = describeCall(el.codeFlavour.value);
    el.codeText.textContent = codeLanguage() === "python" ? toPython(call) : toCurl(call);
    el.codeNotes.replaceChildren(...call.notes.map((note) => textNode("li", note)));
    el.codeNotes.hidden = call.notes.length === 0;
    el.codeStatus.textContent = "";
  }

  el.codeButton.addEventListener("click", () => {
    renderCode();
    if (!el.codeDialog.open) el.codeDialog.showModal();
    el.codeFlavour.focus();
  });
  el.codeFlavour.addEventListener("change", renderCode);
  el.codeDialog
    .querySelectorAll('input[name="code-language"]')
    .forEach((radio) => radio.addEventListener("change", renderCode));
  el.codeClose.addEventListener("click", () => el.codeDialog.close());
  el.codeCopy.addEventListener("click", async () => {
    const text = el.codeText.textContent;
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      // Not a secure context (plain http on another host): copy the selection instead.
      const range = document.createRange();
      range.selectNodeContents(el.codeText);
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      if (!document.execCommand("copy")) {
        el.codeStatus.textContent = "Selected: press Ctrl+C (⌘C) to copy.";
        return;
      }
    }
    el.codeStatus.textContent = "Copied.";
  });

  // ---------- API key ----------

  function openKeyDialog(reason) {
    el.keyReason.textContent =
      reason ||
      "This server requires an API key. It is stored in this browser and sent as a Bearer token to this server only.";
    el.keyInput.value = apiKey();
    if (!el.keyDialog.open) el.keyDialog.showModal();
    el.keyInput.focus();
  }

  el.keyButton.addEventListener("click", () =>
    openKeyDialog("Stored in this browser and sent as a Bearer token to this server only."),
  );
  el.keyForm.addEventListener("submit", () => {
    const key = el.keyInput.value.trim();
    if (key) writeStorage(KEY_STORAGE, key);
    else localStorage.removeItem(KEY_STORAGE);
    clearError();
    el.progressText.textContent = key ? "API key saved." : "API key removed.";
    checkHealth();
  });
  el.keyForget.addEventListener("click", () => {
    localStorage.removeItem(KEY_STORAGE);
    el.keyInput.value = "";
    el.keyDialog.close();
    el.progressText.textContent = "API key removed from this browser.";
  });
  el.keyCancel.addEventListener("click", () => el.keyDialog.close());

  // ---------- server status ----------

  async function checkHealth() {
    try {
      const response = await fetch("/health", { headers: authHeaders() });
      let body = {};
      try {
        body = await response.json();
      } catch {
        body = {};
      }
      const model = body.model_version || body.version_model || (body.model && body.model.version) || body.model;
      const modelText = typeof model === "string" ? ` · model ${model}` : "";
      const dummyText = body.is_dummy_model ? " (random test weights)" : "";
      el.serverStatus.textContent = response.ok ? `Server ready${modelText}${dummyText}` : "Server is starting…";
      el.serverStatus.classList.toggle("not-ready", !response.ok);
      configureReasoning(typeof model === "string" ? model : "");
      applyModelFacts(body);
    } catch {
      el.serverStatus.textContent = "Server unreachable";
      el.serverStatus.classList.add("not-ready");
    }
  }

  // The loaded model's own defaults (its release's guidance and steps; 512 px for a random
  // `dummy:` model, whose edits are noise anyway), unless the user has set them already.
  function applyModelFacts(body) {
    const defaults = body.defaults || {};
    if (!state.paramsTouched) {
      if (defaults.guidance_scale != null) setGuidance(defaults.guidance_scale);
      if (defaults.num_inference_steps != null) setSteps(defaults.num_inference_steps);
      if ([...el.size.options].some((o) => o.value === String(defaults.size_level)))
        el.size.value = String(defaults.size_level);
    }
    el.modelHint.hidden = !body.is_dummy_model;
    el.modelHint.textContent = body.is_dummy_model
      ? "This server runs a random-weight test model: its edits come out as noise. 512 px keeps a try to seconds."
      : "";
  }

  function configureReasoning(model) {
    const known = /v?1\.[0-9]/.test(model);
    const isReasoning = /1\.2/.test(model);
    el.reasoning.disabled = known && !isReasoning;
    el.reasoningHint.textContent = el.reasoning.disabled
      ? "This server runs a model without the reasoning passes."
      : "Thinking rewrites the instruction; reflection checks the result and retries.";
  }

  renderHistory();
  configureReasoning("");
  checkHealth();
})();
