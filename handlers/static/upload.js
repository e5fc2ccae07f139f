// Progressive enhancement: without this script every form still posts and every code can be
// selected and copied by hand. With it: drop, paste or pick several files, each checked here
// (type, size) and sent in its own request with its own progress bar; copy buttons.
"use strict";

(function () {
  document.documentElement.classList.add("js");
  const TYPES = ["image/jpeg", "image/png", "image/gif", "image/webp", "image/heic", "image/heif", "image/avif"];
  // A browser that does not know a type (HEIC, on many systems) gives none: the name decides then.
  const NAMES = /\.(jpe?g|png|gif|webp|heic|heif|avif)$/i;

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text) node.textContent = text;
    return node;
  }

  function copyText(text, button) {
    const done = () => {
      button.textContent = "Copied";
      button.classList.add("copied");
      setTimeout(() => { button.textContent = "Copy"; button.classList.remove("copied"); }, 1500);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, () => fallbackCopy(text) && done());
    } else if (fallbackCopy(text)) {
      done();
    }
  }

  function fallbackCopy(text) {
    const area = el("textarea", { readonly: "", "aria-hidden": "true", class: "offscreen" });
    area.value = text;
    document.body.append(area);
    area.select();
    let ok = false;
    try { ok = document.execCommand("copy"); } catch (_) { ok = false; }
    area.remove();
    return ok;
  }

  // Copy buttons, on pages and in results added later.
  document.addEventListener("click", (e) => {
    const button = e.target.closest ? e.target.closest(".copy-btn") : null;
    if (!button) return;
    const field = document.getElementById(button.dataset.copy);
    if (field) copyText(field.value, button);
  });
  for (const b of document.querySelectorAll(".copy-btn")) b.hidden = false;

  const form = document.getElementById("upload-form");
  if (!form || !window.FormData || !window.XMLHttpRequest) return;
  const drop = document.getElementById("drop");
  const input = form.querySelector('input[type="file"]');
  const results = document.getElementById("results");
  const maxBytes = Number(form.dataset.maxBytes) || Infinity;
  const maxFiles = Number(form.dataset.maxFiles) || 20;
  input.required = false;
  let counter = 0;

  function codeRow(id, label, value) {
    const row = el("div", { class: "code" });
    row.append(el("label", { for: id }, label));
    const field = el("input", { id: id, type: "text", readonly: "" });
    field.value = value;
    row.append(field, el("button", { type: "button", class: "copy-btn", "data-copy": id }, "Copy"));
    return row;
  }

  function refuse(file) {
    const known = TYPES.includes(file.type) || (file.type === "" && NAMES.test(file.name));
    if (!known) return "not a picture (JPEG, PNG, GIF, WebP, HEIC or AVIF only)";
    if (file.size > maxBytes) return "over " + Math.round(maxBytes / 1048576) + " MB";
    if (file.size === 0) return "empty file";
    return "";
  }

  function sendOne(file) {
    const n = ++counter;
    document.body.classList.add("has-results");
    const row = el("li", { class: "upload-row" });
    const head = el("div", { class: "row-head" });
    const name = el("span", { class: "row-name" }, file.name || "pasted picture");
    head.append(name);
    row.append(head);
    results.prepend(row);
    const problem = refuse(file);
    if (problem) {
      row.append(el("span", { class: "error" }, "Not sent: " + problem + "."));
      return;
    }
    const bar = el("progress", { max: "100", value: "0" });
    row.append(bar);

    const data = new FormData();
    data.append("file", file, file.name || "pasted.png");
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
          const link = el("a", { href: f.page_url, class: "thumb-link" });
          link.append(el("img", { src: f.thumbnail_url, alt: "" }));
          head.prepend(link);
          name.replaceWith(el("a", { href: f.page_url, class: "row-name" }, location.origin + f.page_url));
          const id = "r" + n + "-" + f.id;
          row.append(codeRow(id + "-page", "Page link", f.share.page));
          row.append(codeRow(id + "-direct", "Direct link", f.share.direct));
          row.append(codeRow(id + "-bbcode", "BBCode", f.share.bbcode));
          row.append(codeRow(id + "-markdown", "Markdown", f.share.markdown));
          row.append(codeRow(id + "-key", "Delete key", f.delete_token));
          row.append(codeRow(id + "-delete", "Delete link", location.origin + f.delete_link));
        }
      } else if (xhr.status === 413) {
        row.append(el("span", { class: "error" }, "Refused: over the size limit."));
      } else if (xhr.status === 429) {
        const wait = xhr.getResponseHeader("Retry-After") || "60";
        row.append(el("span", { class: "error" }, "Too many uploads; try again in " + wait + " seconds."));
      } else {
        const message = reply && reply.error ? reply.error.message : "Upload failed (" + xhr.status + ").";
        row.append(el("span", { class: "error" }, message));
      }
    };
    xhr.onerror = () => { bar.remove(); row.append(el("span", { class: "error" }, "Network error.")); };
    xhr.send(data);
  }

  function sendAll(files) {
    const list = Array.from(files || []);
    if (list.length > maxFiles) {
      const row = el("li", { class: "upload-row" });
      row.append(el("span", { class: "error" }, "At most " + maxFiles + " pictures at once; the first " +
                    maxFiles + " are sent."));
      results.prepend(row);
    }
    for (const f of list.slice(0, maxFiles)) sendOne(f);
  }

  input.addEventListener("change", () => { sendAll(input.files); input.value = ""; });
  form.addEventListener("submit", (e) => { e.preventDefault(); sendAll(input.files); });
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) {
    drop.addEventListener(type, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (e) => { e.preventDefault(); sendAll(e.dataTransfer.files); });
  // A screenshot or copied picture pasted anywhere on the page is uploaded.
  document.addEventListener("paste", (e) => {
    const items = e.clipboardData ? Array.from(e.clipboardData.items || []) : [];
    const files = items.filter((i) => i.kind === "file").map((i) => i.getAsFile()).filter(Boolean);
    if (files.length) { e.preventDefault(); sendAll(files); }
  });
})();
