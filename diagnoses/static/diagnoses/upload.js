// Drag and drop onto the drop zone fills the same <input type=file multiple>.
(function () {
  const zone = document.getElementById("drop-zone");
  const input = zone && zone.querySelector("input[type=file]");
  const count = document.getElementById("drop-count");
  if (!input) return;
  const show = () => { count.textContent = input.files.length ? input.files.length + " file(s) selected" : ""; };
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
