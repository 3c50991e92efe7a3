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
  };

  const state = {
    file: null, // File chosen by picker or drop
    fileUnreadable: false, // the browser could not decode it: not worth uploading
    sourceUrl: null, // object URL (file) or the pasted URL, shown as "before"
    jobId: null,
    abort: null, // AbortController of the running job's requests
    resultUrls: [], // object URLs of fetched outputs, revoked on the next run
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
      const detail = Array.isArray(body.detail)
        ? body.detail.map((d) => `${(d.loc || []).slice(-1)[0] || "field"}: ${d.msg}`).join("; ")
        : String(body.detail);
      return new ApiError(response.status, "", detail);
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

  function showError(text) {
    el.error.textContent = text;
    el.error.hidden = false;
  }

  function clearError() {
    el.error.textContent = "";
    el.error.hidden = true;
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
    showError(describeError(apiErr));
  }

  // ---------- source image ----------

  function setSourceFile(file) {
    clearError();
    if (!file) return;
    if (file.type && !ACCEPTED_TYPES.has(file.type)) {
      resetSource();
      showError(`"${file.name}" is not a supported image. Use a PNG, JPEG or WebP file.`);
      return;
    }
    resetSource();
    state.file = file;
    state.sourceUrl = URL.createObjectURL(file);
    el.url.value = "";
    el.preview.src = state.sourceUrl;
    el.preview.alt = `Selected image: ${file.name}`;
    el.preview.hidden = false;
    el.sourceName.textContent = `${file.name} · ${formatBytes(file.size)}`;
    el.sourceName.hidden = false;
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
  }

  el.preview.addEventListener("error", () => {
    if (!el.preview.getAttribute("src")) return;
    el.preview.hidden = true;
    if (state.file) {
      state.fileUnreadable = true;
      showError(`"${state.file.name}" could not be read as an image. Use a PNG, JPEG or WebP file.`);
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

  function applyParams(p) {
    el.prompt.value = p.prompt || "";
    el.negative.value = p.negative_prompt || "";
    if (p.guidance_scale != null) el.guidance.value = el.guidanceValue.value = p.guidance_scale;
    if (p.num_inference_steps != null)
      el.steps.value = el.stepsValue.value = p.num_inference_steps;
    el.seed.value = p.seed == null ? "" : p.seed;
    if (p.size_level) el.size.value = String(p.size_level);
    if (p.num_images) el.numImages.value = String(p.num_images);
    el.thinking.checked = Boolean(p.enable_thinking);
    el.reflection.checked = Boolean(p.enable_reflection);
  }

  function validate(params) {
    if (!state.file && !el.url.value.trim()) return "Choose an image or paste a public image URL.";
    if (state.fileUnreadable)
      return `"${state.file.name}" could not be read as an image. Use a PNG, JPEG or WebP file.`;
    if (!params.prompt) return "Write an instruction describing the edit.";
    if (!(params.guidance_scale >= 0 && params.guidance_scale <= 20))
      return "Guidance scale must be between 0 and 20.";
    const steps = params.num_inference_steps;
    if (!(Number.isInteger(steps) && steps >= 1 && steps <= 50))
      return "Steps must be a whole number between 1 and 50.";
    if (params.seed != null && !(Number.isInteger(params.seed) && params.seed <= 2147483647))
      return "Seed must be a whole number up to 2147483647, or empty for random.";
    return null;
  }

  // ---------- prompt enhancer ----------

  el.enhance.addEventListener("click", async () => {
    clearError();
    const prompt = el.prompt.value.trim();
    if (!prompt) {
      showError("Write an instruction first, then enhance it.");
      el.prompt.focus();
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
    const body = { ...params, image };
    for (const name of Object.keys(body)) if (body[name] === null) delete body[name];
    if (body.negative_prompt === "") delete body.negative_prompt;
    return {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    };
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
      showError(problem);
      return;
    }
    const controller = new AbortController();
    state.abort = controller;
    setRunning(true);
    showProgress(null, "submitting");
    const source = state.file
      ? { kind: "file", name: state.file.name }
      : { kind: "url", url: el.url.value.trim() };
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
      await finishJob(job, params, source, beforeUrl);
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

  async function finishJob(job, params, source, beforeUrl) {
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
    const shown = await showOutputs(job, beforeUrl);
    // On a phone the result panel sits below the form: bring it into view.
    if (window.matchMedia("(max-width: 820px)").matches) el.result.scrollIntoView({ block: "start" });
    addHistory(job, params, source, shown);
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

  async function showOutputs(job, beforeUrl) {
    state.resultUrls.forEach((u) => URL.revokeObjectURL(u));
    state.resultUrls = [];
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
      item.append(outputCard(job, i, output, objectUrl));
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
    return shown;
  }

  function outputCard(job, i, output, objectUrl) {
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
    card.append(meta);
    return card;
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

  async function addHistory(job, params, source, shown) {
    const entry = {
      id: job.id,
      at: job.created_at || new Date().toISOString(),
      params: { ...params, seed: job.seed ?? (shown.length ? shown[0].seed : params.seed) },
      source,
      outputs: shown.map((s) => ({ url: s.url, seed: s.seed })),
      thumb: shown.length ? await makeThumb(shown[0].objectUrl) : null,
    };
    const entries = [entry, ...readStorage(HISTORY_STORAGE, []).filter((h) => h.id !== job.id)];
    entries.length = Math.min(entries.length, HISTORY_LIMIT);
    while (!writeStorage(HISTORY_STORAGE, entries) && entries.length > 1) entries.pop();
    renderHistory();
  }

  function renderHistory() {
    const entries = readStorage(HISTORY_STORAGE, []);
    el.history.replaceChildren();
    el.historyClear.hidden = entries.length === 0;
    if (!entries.length) {
      el.history.append(textNode("li", "No edits yet.", "hint"));
      return;
    }
    for (const entry of entries) {
      const p = entry.params || {};
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "history-item";
      if (entry.thumb) {
        const img = document.createElement("img");
        img.src = entry.thumb;
        img.alt = "";
        button.append(img);
      }
      const text = document.createElement("span");
      text.className = "history-text";
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
      button.setAttribute("aria-label", `Restore edit: ${p.prompt || ""}`);
      button.addEventListener("click", () => restoreHistory(entry));
      li.append(button);
      el.history.append(li);
    }
  }

  async function restoreHistory(entry) {
    clearError();
    applyParams(entry.params || {});
    if (entry.source && entry.source.kind === "url" && entry.source.url) {
      el.file.value = "";
      setSourceUrl(entry.source.url);
    }
    el.progressText.textContent = "Parameters restored from history.";
    el.prompt.focus();
    if (!entry.outputs || !entry.outputs.length) return;
    try {
      await showOutputs(
        { id: entry.id, outputs: entry.outputs, request: entry.params },
        state.sourceUrl,
      );
    } catch {
      // older results may have expired on the server; the parameters are what matters
    }
    if (!state.resultUrls.length)
      el.progressText.textContent = "Parameters restored; the result images have expired.";
  }

  el.historyClear.addEventListener("click", () => {
    writeStorage(HISTORY_STORAGE, []);
    renderHistory();
    el.progressText.textContent = "History cleared.";
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
      el.serverStatus.textContent = response.ok ? `Server ready${modelText}` : "Server is starting…";
      el.serverStatus.classList.toggle("not-ready", !response.ok);
      configureReasoning(typeof model === "string" ? model : "");
    } catch {
      el.serverStatus.textContent = "Server unreachable";
      el.serverStatus.classList.add("not-ready");
    }
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
