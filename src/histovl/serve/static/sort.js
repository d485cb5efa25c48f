// Click a header of a table.sortable to sort its rows (numbers as numbers); click again to flip.
(function () {
  "use strict";
  function value(cell) {
    const text = cell.textContent.trim();
    const num = parseFloat(text.replace(/[–,].*$/, ""));
    return text !== "" && !isNaN(num) && /^[-+]?[\d.]/.test(text) ? num : text.toLowerCase();
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("thead th").forEach(function (th, col) {
      th.addEventListener("click", function () {
        const dir = th.dataset.dir === "desc" ? "asc" : "desc";
        table.querySelectorAll("thead th").forEach(function (h) { delete h.dataset.dir; });
        th.dataset.dir = dir;
        const body = table.tBodies[0];
        const rows = Array.from(body.rows);
        rows.sort(function (a, b) {
          const x = a.cells[col] ? value(a.cells[col]) : "", y = b.cells[col] ? value(b.cells[col]) : "";
          if (x === y) return 0;
          if (x === "") return 1;
          if (y === "") return -1;
          const cmp = typeof x === typeof y ? (x < y ? -1 : 1) : (typeof x === "number" ? -1 : 1);
          return dir === "asc" ? cmp : -cmp;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
})();
