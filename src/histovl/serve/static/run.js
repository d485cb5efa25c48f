// Run page: the images of the selected confusion-matrix cell (or all), sorted and filtered,
// fetched from /api/runs/<id>/items; click an image for the large view with every class score.
(function () {
  "use strict";
  const section = document.getElementById("images");
  if (!section) return;
  const runId = section.dataset.run, pageSize = parseInt(section.dataset.page, 10) || 200;
  const grid = document.getElementById("grid"), more = document.getElementById("more");
  const form = document.getElementById("controls"), clear = document.getElementById("clear-cell");
  const selection = document.getElementById("selection");
  let cell = null, offset = 0, total = 0, loaded = [];

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(function ([k, v]) { node.setAttribute(k, v); });
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function fmt(x) { return x === null || x === undefined ? "–" : x.toFixed(3); }

  function params() {
    const p = new URLSearchParams({ sort: form.sort.value, order: form.order.value, offset: offset, limit: pageSize, thumbs: 160 });
    if (cell) { p.set("true", cell.true); p.set("pred", cell.pred); }
    if (form.wrong.checked) p.set("wrong", "true");
    if (form.low.checked) p.set("max_margin", form.margin.value);
    return p;
  }

  function card(item) {
    const fig = el("figure", { class: "tile" + (item.correct === false ? " wrong" : ""), "data-index": item.index });
    fig.appendChild(item.image ? el("img", { src: item.thumb || "/thumb/" + item.image + "?size=160", alt: item.path })
                               : el("div", { class: "noimg" }, "image not available"));
    const cap = el("figcaption");
    cap.appendChild(el("b", {}, item.prediction || ""));
    cap.appendChild(document.createTextNode(" " + fmt(item.confidence) + " · margin " + fmt(item.margin)));
    if (item.label !== null) { cap.appendChild(el("br")); cap.appendChild(document.createTextNode("true: " + item.label)); }
    fig.appendChild(cap);
    fig.addEventListener("click", function () { openLarge(item); });
    return fig;
  }

  function load(reset) {
    if (reset) { offset = 0; loaded = []; grid.replaceChildren(); }
    return fetch("/api/runs/" + runId + "/items?" + params().toString(), { credentials: "same-origin" })
      .then(function (r) { return r.json(); })
      .then(function (data) {
        total = data.total;
        data.items.forEach(function (item) { loaded.push(item); grid.appendChild(card(item)); });
        offset += data.items.length;
        more.hidden = offset >= total;
        selection.textContent = (cell ? "true " + cell.true + " → predicted " + cell.pred + ": " : "") + total + " images";
        grid.dataset.total = String(total);
        grid.dataset.ready = "1";
        const images = Array.from(grid.querySelectorAll("img"));
        return Promise.all(images.map(function (img) {
          return img.complete ? null : new Promise(function (done) { img.onload = img.onerror = done; });
        })).then(function () {
          grid.dataset.imagesMs = performance.now().toFixed(0);  // every image loaded, ms since navigation start (bench)
        });
      });
  }

  function openLarge(item) {
    const dialog = document.getElementById("large"), info = document.getElementById("large-info");
    document.getElementById("large-img").src = item.image ? "/view/" + item.image : "";
    info.replaceChildren(el("p", { class: "path" }, item.path));
    const bars = el("div", { class: "bars" });
    const entries = Object.entries(item.scores).sort(function (a, b) { return (b[1] || 0) - (a[1] || 0); });
    entries.forEach(function ([name, score], i) {
      bars.appendChild(el("span", {}, name + (name === item.label ? " (true)" : "")));
      const bar = el("div", { class: "bar" }), fill = el("span", { class: i === 0 ? "top" : "", style: "width:" + (100 * (score || 0)).toFixed(1) + "%" });
      bar.appendChild(fill); bars.appendChild(bar);
      bars.appendChild(el("span", {}, fmt(score)));
    });
    info.appendChild(bars);
    dialog.showModal();
  }

  document.querySelectorAll("#confusion td.cell").forEach(function (td) {
    td.querySelector("button").addEventListener("click", function () {
      document.querySelectorAll("#confusion td.selected").forEach(function (x) { x.classList.remove("selected"); });
      td.classList.add("selected");
      cell = { true: td.dataset.true, pred: td.dataset.pred };
      clear.hidden = false;
      load(true);
    });
  });
  clear.addEventListener("click", function () {
    cell = null; clear.hidden = true;
    document.querySelectorAll("#confusion td.selected").forEach(function (x) { x.classList.remove("selected"); });
    load(true);
  });
  form.addEventListener("change", function () { load(true); });
  more.addEventListener("click", function () { load(false); });
  load(true);
})();
