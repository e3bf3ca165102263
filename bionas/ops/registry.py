"""The one registry of operations: ``OPS.get("sep_conv_3x3")(C, stride, affine)`` builds one;
``OPS.get("sep_conv_3x3+zscore")`` the same op with eq. 6's activation (:mod:`bionas.ops.activation`)."""
from bionas.registry import ComposingRegistry, Registry


class OpRegistry(ComposingRegistry):
    """A registry whose ``get`` also builds ``OP+ACTIVATION`` variants."""

    def compose(self, name: str):
        from bionas.ops.activation import with_activation

        base, _, activation = name.partition("+")
        return with_activation(Registry.get(self, base), base, activation)


OPS: OpRegistry = OpRegistry("op")
