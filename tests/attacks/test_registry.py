import pytest

from attacks.registry import Registry


def test_metadata_is_stored_once_and_filters_names():
    reg: Registry[int] = Registry("thing")
    reg.register("both", kind=("training", "inference"))(lambda: 1)
    reg.register("Train", kind="training")(lambda: 2)
    reg.register("plain")(lambda: 3)
    assert reg.names() == ["both", "plain", "train"]
    assert reg.names(kind="training") == ["both", "train"]
    assert reg.names(kind="inference") == ["both"]
    assert reg.names("t*", kind="training") == ["train"]
    assert reg.metadata("TRAIN") == {"kind": "training"}
    assert reg.metadata("plain") == {}
    meta = reg.metadata("both")
    meta["kind"] = "changed"
    assert reg.metadata("both") == {"kind": ("training", "inference")}
    with pytest.raises(ValueError, match="Known things: both, plain, train"):
        reg.metadata("nope")


def test_a_name_registers_once():
    reg: Registry[int] = Registry("thing")
    reg.register("a")(lambda: 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("A")(lambda: 2)
