// leukoscope review: keyboard reclassification (served as /review.js; the
// page's Content-Security-Policy allows scripts from the appliance only).
// Focus a cell (Tab, or click beside its picture) and press the key shown
// beside a class: the cell's own form is submitted, exactly as a click on
// "Set class" would (the same CSRF-protected post). x: not a leukocyte.
// Without this script the forms work as they are.
"use strict";
(function () {
  function editing(t) {
    return t && (t.tagName === "INPUT" || t.tagName === "SELECT" || t.tagName === "TEXTAREA" || t.isContentEditable);
  }
  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.altKey || e.metaKey || e.repeat || editing(e.target)) return;
    var fig = e.target && e.target.closest ? e.target.closest("figure[data-cell]") : null;
    if (!fig) return;
    var form = fig.querySelector("form");
    if (!form || form.dataset.sent) return;
    var key = e.key.length === 1 ? e.key.toLowerCase() : "";
    var submitter;
    if (key === "x") {
      submitter = form.querySelector("button[value=not_leukocyte]");
    } else {
      var opt = form.querySelector("option[data-key='" + key + "']");
      if (!opt) return;
      form.querySelector("select[name=class]").value = opt.value;
      submitter = form.querySelector("button[value=reclassify]");
    }
    if (!submitter) return;
    e.preventDefault();
    form.dataset.sent = "1";
    if (form.requestSubmit) form.requestSubmit(submitter); else submitter.click();
  });
  // Back from a change (the address ends in #c<cell>): that cell keeps the focus.
  var back = location.hash ? document.getElementById(location.hash.slice(1)) : null;
  if (back && back.hasAttribute("data-cell")) back.focus();
})();
