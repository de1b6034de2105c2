// Retraining job page: poll the status endpoint and update the progress bar while active.
(function () {
  const panel = document.getElementById("job-panel");
  if (!panel || panel.dataset.active !== "1") return;
  const set = (id, text) => { const el = document.getElementById(id); if (el) el.textContent = text; };
  const poll = async () => {
    try {
      const response = await fetch(panel.dataset.statusUrl, { headers: { Accept: "application/json" } });
      if (response.ok) {
        const data = await response.json();
        if (!data.active) { window.location.reload(); return; }
        set("job-status", data.status);
        set("job-phase", data.phase ? "· " + data.phase : "");
        set("job-epoch", data.epoch);
        set("job-epochs", data.epochs);
        const bar = document.getElementById("job-progress");
        if (bar) { bar.value = data.percent; bar.textContent = data.percent + "%"; }
        set("job-metrics", Object.entries(data.logs).map(([k, v]) => k + " " + Number(v).toFixed(4)).join(" · "));
        set("job-log", data.log_tail);
      }
    } catch (error) { /* network hiccup: try again */ }
    setTimeout(poll, 2000);
  };
  setTimeout(poll, 2000);
})();
