"""The prompt service's pure rules, case by case: cleaning an LLM's answer, composing templates, reading
style files. (The same rules are exercised end to end over NATS in the other test_prompt_* modules.)"""

from __future__ import annotations

import re

import pytest

from contracts.errors import HubError
from contracts.messages.styles import Style
from prompt_service import library
from prompt_service.composition import compose, tidy
from prompt_service.llm import LlmError, clean_answer

FOX = "a fox in a snowy birch forest, golden hour"


@pytest.mark.parametrize(
    "answer",
    [
        FOX,
        f'"{FOX}"',
        f"\u201c{FOX}\u201d",
        f"Here is the enhanced prompt:\n{FOX}",
        f"Sure! Here's a more vivid version of your prompt:\n\n{FOX}",
        f"Okay, here is the prompt: '{FOX}'",
        f"**Enhanced Prompt:** {FOX}",
        f"Prompt: {FOX}",
        f"### Prompt\n{FOX}",
        f"```text\n{FOX}\n```",
        f"<think>\nThe user wants a fox. Add light.\n</think>\n{FOX}",
        f"{FOX}\n\nThis prompt keeps the fox and adds light.\n\nLet me know if you want changes!",
        f"{FOX}\n\nNote: I added the golden hour for warmth.",
        f'{{"prompt": "{FOX}"}}',
        f"  {FOX}  \n",
    ],
)
def test_chatty_wrappings_are_stripped_down_to_the_prompt(answer: str) -> None:
    assert clean_answer(answer, "a fox") == FOX


def test_a_multi_paragraph_prompt_without_commentary_is_kept_whole() -> None:
    answer = "a fox in the snow,\n\nwarm golden light, birch trees"
    assert clean_answer(answer, "a fox") == "a fox in the snow, warm golden light, birch trees"


def test_words_that_start_like_commentary_are_not_mistaken_for_it() -> None:
    answer = "a fox in the snow\n\nthistles and icicles in the foreground"
    assert clean_answer(answer, "a fox") == "a fox in the snow thistles and icicles in the foreground"


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("", "empty"),
        ("   \n ", "empty"),
        ('""', "empty"),
        ("I'm sorry, but I can't help with that.", "refused"),
        ("As an AI language model, I cannot create images.", "refused"),
        ("Unfortunately I cannot do this.", "refused"),
        ("Could you tell me more about the fox?", "question"),
        ("{'truncated': ", "data (JSON)"),
        ('{"model": "x", "created_at": "2025"}', "data (JSON)"),
        ("<think>I should consider the fox's pose and", "stopped inside its reasoning"),
        ("\ufffd\ufffd\ufffd fox", "garbled"),
        ("12345 !!! ### --- 6789 ...", "does not read as a prompt"),
        ("a fox, " * 400, "characters long"),
    ],
)
def test_answers_that_are_not_prompts_are_rejected_with_the_reason(answer: str, reason: str) -> None:
    with pytest.raises(LlmError, match=re.escape(reason)):
        clean_answer(answer, "a fox")


def test_a_long_original_allows_a_proportionally_long_answer() -> None:
    original = "a fox, " * 300  # 2100 characters
    answer = "a detailed fox, " * 400  # 6400 characters: within 4 times the original
    assert clean_answer(answer, original).startswith("a detailed fox")


def styled(*templates: tuple[str, str]) -> list[Style]:
    return [Style(name=f"s{i}", positive=p, negative=n) for i, (p, n) in enumerate(templates)]


def test_every_slot_of_a_template_is_filled() -> None:
    composed = compose("a cat", "", styled(("{prompt}, and again {prompt}", "")))
    assert composed.positive == "a cat, and again a cat"


def test_a_fragment_glued_to_the_slot_is_never_dropped() -> None:
    # "photo of" also stands alone earlier, but here it is part of the phrase "photo of a cat".
    composed = compose("a cat", "", styled(("{prompt}, photo of", ""), ("photo of {prompt}", "")))
    assert composed.positive == "photo of a cat, photo of"


def test_fragments_compare_without_case_spacing_or_trailing_dots() -> None:
    composed = compose("a cat, Soft  Light.", "", styled(("{prompt}, soft light, warm", "")))
    assert composed.positive == "a cat, Soft Light., warm"


def test_line_breaks_of_a_template_are_kept_and_empty_fragments_vanish() -> None:
    composed = compose("a cat", ", ,", styled(("{prompt}\nbold, ,typography", ",blurry,")))
    assert composed.positive == "a cat\nbold, typography"
    assert composed.negative == "blurry"
    assert tidy("  a ,, b  ,\n\n , c ") == "a, b\nc"


def test_a_style_with_an_empty_template_changes_nothing() -> None:
    composed = compose("a cat", "dog", styled(("", ""), ("{prompt}", "")))
    assert (composed.positive, composed.negative) == ("a cat", "dog")


def test_csv_lines_are_counted_across_multi_line_fields() -> None:
    content = 'name,prompt\r\none,"a\r\nb\r\nc {prompt}"\r\n,orphan\r\n'
    parsed = library.parse("a1111_csv", content)
    assert [e.where for e in parsed.entries] == ["line 2"]
    (refused,) = parsed.refused
    assert refused.where == "line 5" and refused.reason.startswith("line 5 has no name")


def test_a_messy_a1111_csv_is_read_row_by_row_as_a1111_reads_it() -> None:
    content = (
        "name,prompt,negative_prompt\n"
        "top,{prompt} first,\n"
        ">>>>>> Generic Styles <<<<<<,,\n"
        'odd quotes,"a "quoted" word {prompt}", " "\n'  # strict csv refuses this row; A1111 reads it
        "too many,a, b, c\n"
        "slot,art of { prompt },\n"
        "=== Photo ===,\n"
        "after,{prompt} photo,blurry\n"
        'open,"never closed {prompt}\nlast,x,y\n'
    )
    parsed = library.parse("a1111_csv", content, category="mine")
    assert [(e.where, e.style.name, e.style.category) for e in parsed.entries] == [
        ("line 2", "top", "mine"),
        ("line 4", "odd quotes", "Generic Styles"),
        ("line 8", "after", "Photo"),
    ]
    assert parsed.entries[1].style.positive == 'a quoted" word {prompt}"'
    assert [(s.where, s.reason) for s in parsed.separators] == [("line 3", "Generic Styles"), ("line 7", "Photo")]
    reasons = {r.where: r.reason for r in parsed.refused}
    assert list(reasons) == ["line 5", "line 6", "line 9"]
    assert "4 fields" in reasons["line 5"] and "double quotes" in reasons["line 5"]
    assert "{prompt}" in reasons["line 6"]
    assert "never closed" in reasons["line 9"]


def test_a_csv_header_naming_a_column_twice_is_refused() -> None:
    with pytest.raises(HubError, match="names the column `prompt` twice"):
        library.parse("a1111_csv", "name,prompt,prompt\nx,y,z\n")


def test_a_csv_with_extra_columns_and_spaces_after_commas_reads_the_known_ones() -> None:
    parsed = library.parse("a1111_csv", 'Name, Prompt, negative_prompt, notes\nx, "a, {prompt}", bad, n/a\n')
    (entry,) = parsed.entries
    assert (entry.where, entry.style.name, entry.style.positive, entry.style.negative) == (
        "line 2",
        "x",
        "a, {prompt}",
        "bad",
    )


def test_a_fooocus_file_with_a_byte_order_mark_is_read() -> None:
    (entry,) = library.parse("fooocus_json", '\ufeff[{"name": "x", "prompt": "{prompt} y"}]').entries
    assert entry.style.positive == "{prompt} y" and entry.style.negative == ""


def test_an_over_long_prompt_in_a_file_names_the_entry_and_the_field() -> None:
    content = f'[{{"name": "ok"}}, {{"name": "huge", "prompt": "{"x" * 4001}"}}]'
    with pytest.raises(HubError, match=r"entry 2 \('huge'\): .*`prompt`"):
        library.parse("fooocus_json", content)
