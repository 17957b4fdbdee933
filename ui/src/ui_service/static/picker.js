// The style picker (plain JS, no build step). The server renders a multiple <select name="styles"> with the
// chosen styles selected and the library as JSON; this replaces the select with chips (one hidden input
// name="styles" each), a search box, and results grouped by category. Styles made for other render types
// than the one chosen are listed greyed with the reason, never silently left out.
(function () {
  const MAX_SHOWN = 80;  // a search narrows a 1,000-style library; the list says how many more there are

  function setUp(root) {
    const styles = JSON.parse(root.querySelector(".picker-data").textContent);
    const byName = new Map(styles.map((s) => [s.name, s]));
    const fallback = root.querySelector(".picker-fallback");
    const chosen = Array.from(fallback.selectedOptions, (o) => o.value);
    fallback.remove();
    const chips = root.querySelector(".chips"), search = root.querySelector(".picker-search");
    const results = root.querySelector(".picker-results");
    const renderSelect = root.dataset.renderSelect ? document.getElementById(root.dataset.renderSelect) : null;
    search.hidden = false;

    function renderType() {
      if (!renderSelect) return "";
      const option = renderSelect.selectedOptions[0];
      return option ? (option.dataset.name || option.value) : "";
    }
    function whyNot(style) {
      const rt = renderType();
      if (!rt || !style.render_types.length || style.render_types.includes(rt)) return "";
      return "made for " + style.render_types.join(", ") + ", not " + rt;
    }
    function markChosenMode() {
      const name = root.dataset.modeRadio;
      const radio = name && document.querySelector("input[name='" + name + "'][value=chosen]");
      if (radio) radio.checked = true;
    }
    function toggle(name) {
      const at = chosen.indexOf(name);
      if (at >= 0) chosen.splice(at, 1); else chosen.push(name);
      markChosenMode();
      drawChips();
      drawResults();
    }
    function drawChips() {
      chips.replaceChildren();
      if (!chosen.length) {
        const none = document.createElement("span");
        none.className = "muted small";
        none.textContent = "No style chosen.";
        chips.append(none);
      }
      for (const name of chosen) {
        const style = byName.get(name) || { name: name, render_types: [], is_default: false };
        const chip = document.createElement("span");
        chip.className = "chip";
        chip.dataset.name = name;
        const why = whyNot(style);
        if (why) { chip.classList.add("incompatible"); chip.title = why; }
        chip.append(name + (style.is_default ? " · default" : "") + (why ? " ⚠ " + why : ""));
        const remove = document.createElement("button");
        remove.type = "button";
        remove.textContent = "×";
        remove.setAttribute("aria-label", "Remove " + name);
        remove.addEventListener("click", () => toggle(name));
        const input = document.createElement("input");
        input.type = "hidden"; input.name = "styles"; input.value = name;
        chip.append(remove, input);
        chips.append(chip);
      }
    }
    function matches(style, phrase) {
      return (style.name + "\n" + style.category + "\n" + style.description).toLowerCase().includes(phrase);
    }
    function drawResults() {
      if (results.hidden) return;
      const phrase = search.value.trim().toLowerCase().split(/\s+/).join(" ");
      const found = styles.filter((s) => matches(s, phrase));
      const groups = new Map();
      for (const style of found.slice(0, MAX_SHOWN)) {
        if (!groups.has(style.category)) groups.set(style.category, []);
        groups.get(style.category).push(style);
      }
      results.replaceChildren();
      for (const [category, members] of groups) {
        const heading = document.createElement("h4");
        heading.textContent = category;
        results.append(heading);
        for (const style of members) results.append(option(style));
      }
      const note = document.createElement("p");
      note.className = "muted small picker-count";
      note.textContent = !found.length ? "No style matches." :
        found.length > MAX_SHOWN ? found.length + " styles match; the first " + MAX_SHOWN + " are shown, type more to narrow." :
        found.length + " style" + (found.length === 1 ? "" : "s") + " match.";
      results.append(note);
    }
    function option(style) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "picker-option";
      button.setAttribute("role", "option");
      button.dataset.name = style.name;
      const picked = chosen.includes(style.name);
      button.setAttribute("aria-selected", String(picked));
      const label = document.createElement("span");
      label.textContent = (picked ? "✓ " : "") + style.name;
      button.append(label);
      if (style.is_default) {
        const pill = document.createElement("span");
        pill.className = "pill ok"; pill.textContent = "default";
        button.append(pill);
      }
      const why = whyNot(style);
      if (why) {
        button.setAttribute("aria-disabled", "true");
        const reason = document.createElement("span");
        reason.className = "why muted"; reason.textContent = why;
        button.append(reason);
      }
      button.addEventListener("click", () => {
        if (why && !picked) return;
        toggle(style.name);
        search.focus();  // the list was redrawn under the pointer; typing goes on in the search box
      });
      return button;
    }
    function open() { results.hidden = false; drawResults(); }
    results.addEventListener("mousedown", (event) => event.preventDefault());  // keeps the focus in the search box
    search.addEventListener("focus", open);
    search.addEventListener("input", open);
    search.addEventListener("keydown", (event) => {
      if (event.key === "Enter") {  // picks the first offered style instead of submitting the form
        event.preventDefault();
        const first = results.querySelector(".picker-option:not([aria-disabled=true])");
        if (first) first.click();
      } else if (event.key === "Escape") {
        results.hidden = true;
      } else if (event.key === "ArrowDown") {
        event.preventDefault();
        const first = results.querySelector(".picker-option");
        if (first) first.focus();
      }
    });
    // Closed by a click elsewhere (after the click, so the page does not move under the pointer) or by Tab.
    document.addEventListener("click", (event) => {
      if (!root.contains(event.target)) results.hidden = true;
    });
    root.addEventListener("keydown", (event) => {
      if (event.key === "Tab" && !event.shiftKey) results.hidden = true;
    });
    if (renderSelect) renderSelect.addEventListener("change", () => { drawChips(); drawResults(); });
    drawChips();
  }

  document.querySelectorAll("[data-style-picker]").forEach(setUp);
})();
