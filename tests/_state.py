"""Comparing state dicts in tests: tensors bit for bit (NaN equal to NaN), everything else by value."""
import torch


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            torch.testing.assert_close(a[key], b[key], equal_nan=True, rtol=0, atol=0, msg=key)
        else:
            assert a[key] == b[key], key
