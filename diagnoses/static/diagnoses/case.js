// Case page: heatmap show/hide toggle and opacity slider, and polling while a prediction is pending.
(function () {
  const slider = document.getElementById("heatmap-opacity");
  const heatmap = document.getElementById("heatmap");
  if (slider && heatmap) {
    slider.addEventListener("input", () => { heatmap.style.opacity = slider.value / 100; });
  }
  const toggle = document.getElementById("heatmap-toggle");
  if (toggle && heatmap) {
    toggle.addEventListener("change", () => { heatmap.hidden = !toggle.checked; });
  }
  const panel = document.getElementById("reading-panel");
  if (!panel || panel.dataset.pending !== "1") return;
  const statusLine = document.getElementById("prediction-status");
  const poll = async () => {
    try {
      const response = await fetch(panel.dataset.statusUrl, { headers: { Accept: "application/json" } });
      if (response.ok) {
        const data = await response.json();
        if (!data.pending) { window.location.reload(); return; }
        if (statusLine) statusLine.textContent = "Prediction " + data.status + "…";
      }
    } catch (error) { /* network hiccup: try again */ }
    setTimeout(poll, 1500);
  };
  setTimeout(poll, 1500);
})();
