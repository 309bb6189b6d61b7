"""The comparison behind ``benchmarks/trl_dpo_suite.py`` (the suite itself runs for minutes: run it by hand)."""

from benchmarks.trl_dpo_suite import compare, parse_junit

JUNIT = """<testsuites><testsuite>
<testcase classname="tests.t" name="a"/>
<testcase classname="tests.t" name="b">{b}</testcase>
<testcase classname="tests.t" name="c"><failure message="broken setup"/></testcase>
<testcase classname="tests.t" name="d"><skipped message="test requires vision"/></testcase>
</testsuite></testsuites>"""


def test_compare_names_failures_only_with_the_callback(tmp_path):
    plain, callback = tmp_path / "p.xml", tmp_path / "c.xml"
    plain.write_text(JUNIT.format(b=""))
    callback.write_text(JUNIT.format(b='<error message="ours broke it"/>'))
    events = [
        {"test": "t::a", "attached": 1, "callbacks": [{"started": True, "probe_passes": 2, "failures": []}]},
        {"test": "t::b", "refused": ["ValueError: no"]},
        {"test": "t::c", "attached": 1, "callbacks": [{"started": True, "failures": [{"stage": "probe"}]}]},
    ]
    result = compare(
        {"outcomes": parse_junit(plain), "events": [], "seconds": 1},
        {"outcomes": parse_junit(callback), "events": events, "seconds": 2},
    )
    assert result["fail_only_with_callback"] == {"tests.t::b": "ours broke it"}
    assert list(result["fail_in_both"]) == ["tests.t::c"] and result["skipped_in_both"] == 1
    assert result["plain"] == {"collected": 4, "passed": 2, "failed": 1, "error": 0, "skipped": 1}
    assert result["refused_at_attach"] == {"t::b": ["ValueError: no"]}
    assert result["callbacks_that_probed"] == 1 and result["probe_passes"] == 2
    assert list(result["errors_our_code_logged_and_survived"]) == ["t::c"]
