// Slide viewer: OpenSeadragon over the server's DeepZoom tiles, one overlay image (tissue map,
// predicted class or a class score) on top with an opacity slider; a click shows the tile's
// scores and its nearest tiles.
(function () {
  "use strict";
  const box = document.getElementById("osd");
  if (!box || typeof OpenSeadragon === "undefined") return;
  const slideId = box.dataset.slide, scale = parseFloat(box.dataset.scale) || 1;
  const widthFraction = parseFloat(box.dataset.widthFraction) || 1;
  const select = document.getElementById("overlay"), opacity = document.getElementById("opacity");
  const info = document.getElementById("tile-info");
  let overlayItem = null, slideItem = null, tilesLoaded = 0;

  const viewer = OpenSeadragon({
    element: box, prefixUrl: "/static/vendor/openseadragon/images/", tileSources: box.dataset.dzi,
    showNavigator: true, navigatorPosition: "BOTTOM_RIGHT", gestureSettingsMouse: { clickToZoom: false },
    maxZoomPixelRatio: 4, imageSmoothingEnabled: false, drawer: "canvas", crossOriginPolicy: false,
  });
  window.histovlViewer = viewer;
  viewer.addHandler("tile-loaded", function () { tilesLoaded += 1; box.dataset.tilesLoaded = String(tilesLoaded); });

  function setOverlay(key) {
    if (overlayItem) { viewer.world.removeItem(overlayItem); overlayItem = null; }
    box.dataset.overlay = key || "";
    box.dataset.overlayReady = key ? "0" : "1";
    if (!key) return;
    viewer.addTiledImage({
      tileSource: { type: "image", url: "/slides/" + slideId + "/overlay.png?key=" + encodeURIComponent(key), buildPyramid: false },
      x: 0, y: 0, width: widthFraction, opacity: opacity ? parseFloat(opacity.value) : 0.6,
      success: function (event) {
        overlayItem = event.item;
        overlayItem.addOnceHandler("fully-loaded-change", function () { box.dataset.overlayReady = "1"; });
        if (overlayItem.getFullyLoaded && overlayItem.getFullyLoaded()) box.dataset.overlayReady = "1";
      },
    });
  }

  viewer.addHandler("open", function () {
    slideItem = viewer.world.getItemAt(0);
    box.dataset.opened = "1";
    if (select) setOverlay(select.value);
  });
  if (select) select.addEventListener("change", function () { setOverlay(select.value); });
  if (opacity) opacity.addEventListener("input", function () { if (overlayItem) overlayItem.setOpacity(parseFloat(opacity.value)); });

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(function ([k, v]) { node.setAttribute(k, v); });
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function show(data) {
    info.replaceChildren();
    if (!data.tile) { info.appendChild(el("p", { class: "muted" }, "No tile here (background, or not kept by the tissue filter).")); return; }
    const t = data.tile;
    info.appendChild(el("h2", {}, "Tile at x " + t.x + ", y " + t.y));
    info.appendChild(el("img", { class: "tile-crop", src: "/slides/" + slideId + "/tile/" + t.index + ".jpg", alt: "tile" }));
    if (t.prediction) info.appendChild(el("p", {}, "predicted: " + t.prediction + (t.margin !== null ? " (margin " + t.margin.toFixed(3) + ")" : "")));
    const bars = el("div", { class: "bars" });
    Object.entries(t.scores).sort(function (a, b) { return b[1] - a[1]; }).forEach(function ([name, s], i) {
      bars.appendChild(el("span", {}, name));
      const bar = el("div", { class: "bar" });
      bar.appendChild(el("span", { class: i === 0 ? "top" : "", style: "width:" + (100 * s).toFixed(1) + "%" }));
      bars.appendChild(bar);
      bars.appendChild(el("span", {}, s.toFixed(3)));
    });
    info.appendChild(bars);
    if (t.tissue_fraction !== null) info.appendChild(el("p", { class: "muted" }, "tissue fraction " + t.tissue_fraction.toFixed(2)));
    if (data.neighbours.length) {
      info.appendChild(el("h2", {}, "Nearest tiles (embedding cosine)"));
      const grid = el("div", { class: "neighbours" });
      data.neighbours.forEach(function (n) {
        const img = el("img", { src: "/slides/" + slideId + "/tile/" + n.index + ".jpg", title: (n.prediction || "") + " · similarity " + n.similarity.toFixed(3), alt: "neighbour" });
        img.addEventListener("click", function () { goTo(n); });
        grid.appendChild(img);
      });
      info.appendChild(grid);
    }
  }

  function goTo(t) {
    if (!slideItem) return;
    const rect = slideItem.imageToViewportRectangle(t.x / scale, t.y / scale, t.width / scale, t.height / scale);
    viewer.viewport.fitBounds(new OpenSeadragon.Rect(rect.x - rect.width, rect.y - rect.height, 3 * rect.width, 3 * rect.height), false);
    query(t.x + t.width / 2, t.y + t.height / 2);
  }

  function query(x, y) {
    fetch("/api/slides/" + slideId + "/at?x=" + x.toFixed(1) + "&y=" + y.toFixed(1), { credentials: "same-origin" })
      .then(function (r) { return r.json(); }).then(show);
  }

  viewer.addHandler("canvas-click", function (event) {
    if (!event.quick || !slideItem) return;
    const p = slideItem.viewerElementToImageCoordinates(event.position);
    query(p.x * scale, p.y * scale);
  });
})();
