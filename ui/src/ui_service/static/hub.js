// Shared by the admin pages (plain JS, no build step).
// A message the server put on the page (an error, a result, a preview) is brought into view, so that the
// admin sees it without scrolling: the one marked [data-attention], else the first error on the page.
(function () {
  function bringIntoView() {
    const marked = document.querySelector("[data-attention]") || document.querySelector(".flash.error, .field-error:not([hidden])");
    if (!marked) return;
    const box = marked.getBoundingClientRect();
    if (box.top < 0 || box.bottom > window.innerHeight) marked.scrollIntoView({ block: "start" });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", bringIntoView);
  else bringIntoView();
})();
