// Progressive enhancement of the upload form: drop or pick several files, each is sent in
// its own request with a progress bar. Without this script the form posts normally.
"use strict";

(function () {
  const form = document.getElementById("upload-form");
  if (!form || !window.FormData || !window.XMLHttpRequest) return;
  const drop = document.getElementById("drop");
  const input = form.querySelector('input[type="file"]');
  const results = document.getElementById("results");
  const button = form.querySelector('button[type="submit"]');
  if (button) button.hidden = true;
  input.required = false;

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text) node.textContent = text;
    return node;
  }

  function sendOne(file) {
    const row = el("li");
    const name = el("span", {}, file.name);
    const bar = el("progress", { max: "100", value: "0" });
    row.append(name, bar);
    results.prepend(row);

    const data = new FormData();
    data.append("file", file);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", form.action);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.setRequestHeader("X-Upload-Page", "1");
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = (100 * e.loaded) / e.total; };
    xhr.onload = () => {
      let reply = null;
      try { reply = JSON.parse(xhr.responseText); } catch (_) { /* not JSON: a front end error page */ }
      bar.remove();
      if (xhr.status === 201 && reply && reply.files) {
        for (const f of reply.files) {
          const link = el("a", { href: f.page_url });
          link.append(el("img", { src: f.thumbnail_url, alt: "", height: "48" }));
          row.prepend(link);
          name.replaceWith(el("a", { href: f.page_url }, location.origin + f.page_url));
        }
      } else {
        const message = reply && reply.error ? reply.error.message : "Upload failed (" + xhr.status + ").";
        row.append(el("span", { class: "error" }, message));
      }
    };
    xhr.onerror = () => { bar.remove(); row.append(el("span", { class: "error" }, "Network error.")); };
    xhr.send(data);
  }

  function sendAll(files) { for (const f of files) sendOne(f); }

  input.addEventListener("change", () => { sendAll(input.files); input.value = ""; });
  form.addEventListener("submit", (e) => { e.preventDefault(); sendAll(input.files); });
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) {
    drop.addEventListener(type, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (e) => { e.preventDefault(); sendAll(e.dataTransfer.files); });
})();
