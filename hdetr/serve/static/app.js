// The page asks for every detection (threshold 0) once per image; the slider only filters what is drawn.
"use strict";

const $ = (id) => document.getElementById(id);
const canvas = $("canvas"), ctx = canvas.getContext("2d");
const slider = $("threshold");
let image = null;       // the decoded upload (an ImageBitmap)
let detections = [];    // from POST /predict, best score first

// One fixed colour per class index (golden-angle hues stay apart for any number of classes).
const colour = (label) => `hsl(${(label * 137.5) % 360}, 80%, 45%)`;

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function draw() {
  const threshold = Number(slider.value);
  $("threshold-value").textContent = threshold.toFixed(2);
  const shown = detections.filter((d) => d.score >= threshold);
  $("count").textContent = shown.length;
  const list = $("detections");
  list.replaceChildren(...shown.map((d) => {
    const li = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = colour(d.label);
    li.append(swatch, `${d.category_name} ${d.score.toFixed(2)}`);
    li.className = "detection";
    return li;
  }));
  if (!image) return;
  ctx.drawImage(image, 0, 0);
  // Line width and labels scale with the image so that they stay readable at any size.
  const unit = Math.max(1, Math.max(image.width, image.height) / 500);
  ctx.lineWidth = 2 * unit;
  ctx.font = `${12 * unit}px system-ui, sans-serif`;
  ctx.textBaseline = "top";
  for (const d of shown) {
    const [x0, y0, x1, y1] = d.bbox_xyxy;
    ctx.strokeStyle = ctx.fillStyle = colour(d.label);
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    const text = `${d.category_name} ${d.score.toFixed(2)}`;
    const h = 15 * unit, w = ctx.measureText(text).width + 4 * unit;
    const ty = y0 - h >= 0 ? y0 - h : y0;  // above the box, inside it at the top edge of the image
    ctx.fillRect(x0 - unit, ty, w, h);
    ctx.fillStyle = "#fff";
    ctx.fillText(text, x0 + unit, ty + 1.5 * unit);
  }
}

async function predict(file) {
  setStatus(`detecting in ${file.name}…`);
  detections = [];
  image = null;
  canvas.width = canvas.height = 0;
  const form = new FormData();
  form.append("image", file);
  form.append("threshold", "0");
  try {
    const response = await fetch("/predict", { method: "POST", body: form });
    const body = await response.json().catch(() => ({ detail: response.statusText }));
    if (!response.ok) throw new Error(body.detail || `HTTP ${response.status}`);
    // The server applied the EXIF orientation; so does the browser here.
    image = await createImageBitmap(file, { imageOrientation: "from-image" });
    canvas.width = image.width;
    canvas.height = image.height;
    detections = body.detections;
    setStatus(`${file.name}: ${body.image.width}×${body.image.height}, ${detections.length} candidate(s), ` +
              `${body.inference_ms.toFixed(0)} ms`);
  } catch (err) {
    setStatus(`${file.name}: ${err.message}`, true);
  }
  draw();
}

$("file").addEventListener("change", (e) => { if (e.target.files[0]) predict(e.target.files[0]); });
slider.addEventListener("input", draw);
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files[0]) predict(e.dataTransfer.files[0]);
});

fetch("/model").then((r) => r.json()).then((info) => {
  slider.value = info.default_threshold;
  $("model-info").textContent = `${info.model ?? "model"} · ${info.config.backbone} · ` +
    `${info.class_names.length} classes: ${info.class_names.join(", ")}`;
  draw();
}).catch(() => setStatus("cannot reach the server's /model", true));
