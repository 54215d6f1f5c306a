// Follows a running job: polls its status (same origin, same cookie) and updates the
// progress bar in place; reloads the page once the job ends, to show its results.
(function () {
  "use strict";
  var section = document.getElementById("job");
  if (!section || section.dataset.terminal === "yes") { return; }
  var url = section.dataset.statusUrl;
  var bar = document.getElementById("progress");
  var text = document.getElementById("progress-text");
  var state = document.getElementById("state");
  function poll() {
    fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (job) {
        if (!job) { setTimeout(poll, 3000); return; }
        bar.max = Math.max(job.progress.total, 1);
        bar.value = job.progress.done;
        text.textContent = job.progress.done + " / " + job.progress.total;
        state.textContent = job.state;
        state.className = "state state-" + job.state;
        section.dataset.state = job.state;
        if (job.terminal) { window.location.reload(); } else { setTimeout(poll, 1000); }
      })
      .catch(function () { setTimeout(poll, 3000); });
  }
  setTimeout(poll, 1000);
})();
