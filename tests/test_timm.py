"""timm backbones (``backbone: timm/<name>``) and the registry's prefix families they use."""

import pytest

from rsvision.errors import RegistryError
from rsvision.registry import Registry


def test_a_prefix_resolves_a_family_of_names():
    reg = Registry("thing")
    reg.register("plain")(lambda: "plain")
    reg.register_prefix("fam/", lambda name, /, **kw: (name, kw), placeholder="<any member>")
    assert reg.build("fam/a.b", size=3) == ("a.b", {"size": 3})
    assert reg.list() == ["fam/<any member>", "plain"]
    assert reg.list("p*") == ["plain"]
    reg.register("fam/special")(lambda: "exact")  # an exact name wins over the prefix
    assert reg.build("fam/special") == "exact"
    with pytest.raises(RegistryError, match="did you mean 'fam/<any member>'"):
        reg.get("fan/<any member>")
    with pytest.raises(RegistryError, match="prefix 'fam/' is already registered"):
        reg.register_prefix("fam/", lambda name: name)
