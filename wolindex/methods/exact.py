"""method='exact': every class scored; the reference and the baseline."""
from .base import Method
from .registry import register


@register
class Exact(Method):
    name = "exact"
    supports_spherical = True

    @classmethod
    def build(cls, layer, params, train, labels, verbose):
        return cls()

    @classmethod
    def restore(cls, layer, arrays, state):
        """The exact method has no arrays; a file holding some is refused."""
        method = cls(arrays, state)
        if method.arrays:
            raise ValueError(f"arrays: method 'exact' has none, got {sorted(str(name) for name in method.arrays)}")
        return method

    def search_with(self, ops, H, k, params):
        """Search on either engine (see methods.ops): every class scored."""
        return ops.exact(H, k)
