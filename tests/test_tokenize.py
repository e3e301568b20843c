import pytest

from agenttune.data import render_trace
from agenttune.tokenize import IGNORE_INDEX, SampleTooLong, encode_sample

from test_canonical import GOOD


def trained_segments(tokenizer, ids, labels):
    segs, cur = [], []
    for i, l in zip(ids, labels):
        if l != IGNORE_INDEX:
            assert l == i
            cur.append(i)
        elif cur:
            segs.append(cur)
            cur = []
    if cur:
        segs.append(cur)
    return [tokenizer.decode(s) for s in segs]


def test_labels_cover_exactly_the_assistant_turns(smol_tokenizer):
    sample = render_trace(GOOD, "react", "react_list")
    ids, labels = encode_sample(smol_tokenizer, sample, 4096)
    expected = [m["content"] + smol_tokenizer.eos_token for m in sample["messages"] if m["role"] == "assistant"]
    assert trained_segments(smol_tokenizer, ids, labels) == expected
    assert len(expected) == 2


def test_loss_false_turn_is_masked(smol_tokenizer):
    sample = render_trace(GOOD, "react", "react_list")
    sample["messages"][2]["loss"] = False
    ids, labels = encode_sample(smol_tokenizer, sample, 4096)
    assert trained_segments(smol_tokenizer, ids, labels) == [sample["messages"][4]["content"] + smol_tokenizer.eos_token]


def test_overlong_drop_and_truncate_keep_whole_turns(smol_tokenizer):
    sample = render_trace(GOOD, "react", "react_list")
    ids, _ = encode_sample(smol_tokenizer, sample, 4096)
    with pytest.raises(SampleTooLong):
        encode_sample(smol_tokenizer, sample, len(ids) - 1, "drop")
    tids, tlabels = encode_sample(smol_tokenizer, sample, len(ids) - 3, "truncate")
    # The second assistant turn does not fit whole, so the sample ends after the first one.
    assert trained_segments(smol_tokenizer, tids, tlabels) == [sample["messages"][2]["content"] + smol_tokenizer.eos_token]
    assert len(tids) < len(ids) - 3
