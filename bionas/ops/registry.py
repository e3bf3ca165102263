"""The one registry of operations: ``OPS.get("sep_conv_3x3")(C, stride, affine)`` builds one;
``OPS.get("sep_conv_3x3+zscore")`` the same op with eq. 6's activation (:mod:`bionas.ops.activation`)."""
from bionas.errors import UnknownNameError
from bionas.registry import Registry


class OpRegistry(Registry):
    """A registry whose ``get`` also builds ``OP+ACTIVATION`` variants."""

    def get(self, name: str):
        if not isinstance(name, str) or "+" not in name:
            return super().get(name)
        from bionas.ops.activation import with_activation

        base, _, activation = name.partition("+")
        return with_activation(super().get(base), base, activation)

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str) and "+" in name:
            from bionas.errors import ConfigError

            try:
                self.get(name)
            except (UnknownNameError, ConfigError):
                return False
            return True
        return super().__contains__(name)


OPS: OpRegistry = OpRegistry("op")
