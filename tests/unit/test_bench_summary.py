"""The bench's summary: one set of tables per link the trials ran on (bench --link, repeatable)."""
from __future__ import annotations

from migrate import bench


def _trial(link: str, method: str, downtime: float) -> bench.Trial:
    t = bench.Trial("memhog", 256, 0.0, method, 0, downtime, downtime, downtime + 1, 256 << 20, 50 << 10, 40 << 10,
                    41 << 10, True)
    t.link = link
    return t


def test_trials_on_several_links_get_a_section_each_in_the_order_they_ran():
    trials = [_trial("", "cmigrate", 1.5), _trial("", "raw", 0.0), _trial("100mbit,1ms", "cmigrate", 22.0)]
    text = bench.summary(trials)
    first, second = text.index("the lab link as it is"), text.index("hostB's link: 100mbit,1ms")
    assert first < second
    assert "1.500" in text[first:second] and "22.000" not in text[first:second]
    assert "22.000" in text[second:]


def test_trials_on_the_lab_link_alone_have_no_link_sections():
    text = bench.summary([_trial("", "cmigrate", 1.5)])
    assert "hostB's link" not in text and "1.500" in text


def test_an_agent_over_its_memory_goal_is_flagged():
    t = _trial("", "cmigrate", 1.5)
    t.src_agent_peak_rss_kib = 70 << 10
    assert "**over 64**" in bench.summary([t])
