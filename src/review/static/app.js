// blip2idc review: keyboard shortcuts, zoom, the comparison modes and the changed regions.
// Progressive: every page works without it.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const compare = document.getElementById("compare");
  if (compare) {
    // Changed regions: boxes in the original's pixels, drawn once its natural size is known.
    const fig = compare.querySelector("figure.original");
    const img = document.getElementById("original");
    // The picture inside the <img> box (object-fit: contain letterboxes it), in the frame's pixels.
    const picture = () => {
      const W = img.clientWidth, H = img.clientHeight, w = img.naturalWidth, h = img.naturalHeight;
      const k = img.classList.contains("zoomed") ? 1 : Math.min(W / w, H / h);
      return { k, x: img.offsetLeft + (W - w * k) / 2, y: img.offsetTop + (H - h * k) / 2 };
    };
    const draw = () => {
      const boxes = JSON.parse(fig.dataset.regions || "[]");
      const frame = fig.querySelector(".frame");
      frame.querySelectorAll(".region").forEach((r) => r.remove());
      if (!img.naturalWidth) return;
      const p = picture();
      for (const [x0, y0, x1, y1] of boxes) {
        const r = document.createElement("div");
        r.className = "region";
        r.style.left = (p.x + x0 * p.k) + "px";
        r.style.top = (p.y + y0 * p.k) + "px";
        r.style.width = ((x1 - x0) * p.k) + "px";
        r.style.height = ((y1 - y0) * p.k) + "px";
        frame.appendChild(r);
      }
    };
    if (img.complete) draw(); else img.addEventListener("load", draw);
    window.addEventListener("resize", draw);
    compare.querySelectorAll("img").forEach((i) => i.addEventListener("click", () => { i.classList.toggle("zoomed"); draw(); }));
    const slider = compare.querySelector(".slider");
    const republished = compare.querySelector("figure.republished");
    const clip = () => { republished.style.clipPath = `inset(0 0 0 ${slider.value}%)`; };
    slider.addEventListener("input", clip);
    let timer = null;
    const setMode = (mode) => {
      compare.classList.remove("side", "flicker", "slider", "show-republished");
      compare.classList.add(mode);
      republished.style.clipPath = "";
      if (mode === "slider") clip();
      draw();
      clearInterval(timer);
      if (mode === "flicker") timer = setInterval(() => compare.classList.toggle("show-republished"), 600);
      document.querySelectorAll(".compare-modes button").forEach((b) => b.classList.toggle("active", b.dataset.mode === mode));
    };
    document.querySelectorAll(".compare-modes button").forEach((b) => b.addEventListener("click", () => setMode(b.dataset.mode)));
    window.__setCompareMode = setMode;
  }
  document.addEventListener("keydown", (e) => {
    const t = e.target;
    if (e.ctrlKey || e.metaKey || e.altKey || (t && /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName))) return;
    const click = (id) => { const el = document.getElementById(id); if (el) { el.click(); e.preventDefault(); } };
    switch (e.key) {
      case "a": click("accept"); break;
      case "c": { const c = document.getElementById("correction"); if (c) { c.focus(); e.preventDefault(); } break; }
      case "s": click("skip"); break;
      case "u": { const u = document.querySelector("#recent button.undo"); if (u) { u.click(); e.preventDefault(); } break; }
      case "f": if (window.__setCompareMode) { window.__setCompareMode(compare.classList.contains("flicker") ? "side" : "flicker"); } break;
      case "/": { const q = document.getElementById("q"); if (q) { q.focus(); e.preventDefault(); } break; }
    }
  });
});
