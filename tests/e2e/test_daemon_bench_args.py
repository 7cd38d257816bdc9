"""benchmarks/daemon_gpu.py's producer paces: one or several (first-byte samples take them in turn), each above 0; and
its lead-in line."""

from __future__ import annotations

import argparse

import pytest

from benchmarks.daemon_gpu import paces, paces_text, short_text


def test_paces_parse_one_or_several():
    assert paces("1") == (1.0,)
    assert paces("1,4") == (1.0, 4.0)


@pytest.mark.parametrize("text", ["", "1,x", "0", "1,-2"])
def test_paces_refuse_what_is_not_a_positive_list(text):
    with pytest.raises(argparse.ArgumentTypeError):
        paces(text)


def test_paces_text_reads_new_and_old_results():
    assert paces_text([1.0, 4.0]) == "1x, 4x"
    assert paces_text(2.0) == "2x"  # a result written before the list
    assert paces_text(None) == "1x"


def test_short_text_orders_the_lead_in_lengths_by_frames():
    assert short_text({"20": 0.61, "12": 0.36, "16": 0.5}) == "12: 0.360 s, 16: 0.500 s, 20: 0.610 s"
    assert short_text({}) == "none" and short_text(None) == "none"
