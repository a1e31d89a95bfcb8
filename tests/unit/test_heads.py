"""Head announcements (store/heads.py): owed projects, tokens, and failures kept owed."""

from __future__ import annotations

from canvas_sync.store.heads import Announcements, token_ms


def test_a_token_names_the_lowest_saved_at_owed_and_is_new_every_pass() -> None:
    heads = Announcements()
    heads.owe(["p", "q"], 200)
    heads.owe(["p"], 100)  # a second save before the announcement: the lowest is named
    written: list[tuple[str, str]] = []
    assert heads.announce(lambda project, token, gen: written.append((project, token)) or True) == 2
    assert written == [("p", "100.1"), ("q", "200.1")] and not heads.owed
    heads.owe(["p"], 300)
    heads.announce(lambda project, token, gen: written.append((project, token)) or True)
    assert written[-1] == ("p", "300.2")
    assert heads.announce(lambda project, token, gen: True) == 0  # nothing owed: nothing written


def test_a_failed_announcement_stays_owed_with_its_lowest_saved_at() -> None:
    heads = Announcements()
    heads.owe(["p", "q"], 100)
    assert heads.announce(lambda project, token, gen: project == "q") == 1
    assert heads.owed
    heads.owe(["p"], 500)  # newer items of p: the token must still name 100
    tokens: list[str] = []
    assert heads.announce(lambda project, token, gen: tokens.append(token) or True) == 1
    assert tokens == ["100.2"] and token_ms(tokens[0]) == 100


def test_touches_may_run_in_parallel() -> None:
    from concurrent.futures import ThreadPoolExecutor

    heads = Announcements()
    heads.owe([f"p{i}" for i in range(50)], 1)
    with ThreadPoolExecutor(4) as pool:
        assert heads.announce(lambda project, token, gen: not project.endswith("7"), pool.map) == 45
    assert heads.owed


def test_unreadable_tokens_read_as_zero() -> None:
    assert token_ms("123.4") == 123 and token_ms("junk") == 0 and token_ms("") == 0


def test_a_head_of_another_generation_fences_the_project_instead_of_owing_it() -> None:
    """The project was deleted after the save: never retried, reported once, with the generation written."""
    heads = Announcements()
    heads.owe(["p"], 100, gen=2)
    heads.owe(["q"], 100)
    seen: list[tuple[str, int]] = []
    assert (
        heads.announce(lambda project, token, gen: seen.append((project, gen)) or (None if project == "p" else True))
        == 1
    )
    assert sorted(seen) == [("p", 2), ("q", 0)] and not heads.owed
    assert heads.take_fenced() == {"p": 2} and heads.take_fenced() == {}
