// Drag and drop onto the drop zone fills the same <input type=file multiple>.
(function () {
  const zone = document.getElementById("drop-zone");
  const input = zone && zone.querySelector("input[type=file]");
  const count = document.getElementById("drop-count");
  if (!input) return;
  const submit = input.form.querySelector("button[type=submit]");
  const maxFiles = Number(input.dataset.maxFiles) || Infinity;
  // The server refuses a batch over the limit whole; say so before anything is sent.
  const show = () => {
    const n = input.files.length;
    const tooMany = n > maxFiles;
    count.textContent = tooMany
      ? n + " files selected: at most " + maxFiles + " can be sent at once."
      : (n ? n + " file(s) selected" : "");
    count.classList.toggle("error", tooMany);
    submit.disabled = tooMany;
  };
  ["dragenter", "dragover"].forEach((type) => zone.addEventListener(type, (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  }));
  ["dragleave", "drop"].forEach((type) => zone.addEventListener(type, () => zone.classList.remove("dragging")));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    input.files = event.dataTransfer.files;
    show();
  });
  input.addEventListener("change", show);
})();
