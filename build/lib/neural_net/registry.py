"""Name -> class registries (activations, initialisers, losses, optimizers, schedules)."""
from .errors import UnknownNameError


class Registry:
    """A dict of name -> class with a decorator to fill it and a lookup that lists valid names."""

    def __init__(self, kind):
        self.kind = kind
        self._classes = {}

    def register(self, name):
        def decorate(cls):
            if name in self._classes:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._classes[name] = cls
            cls.name = name
            return cls
        return decorate

    def names(self):
        return sorted(self._classes)

    def __contains__(self, name):
        return name in self._classes

    def get_class(self, name):
        try:
            return self._classes[name]
        except (KeyError, TypeError):
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; expected one of: {', '.join(self.names())}"
            ) from None

    def get(self, spec, **kwargs):
        """Build an instance from a name, a config dict {"name": ..., **options} or an instance."""
        if isinstance(spec, dict):
            options = dict(spec)
            name = options.pop("name", None)
            return self.get_class(name)(**options, **kwargs)
        if isinstance(spec, str):
            return self.get_class(spec)(**kwargs)
        if any(isinstance(spec, cls) for cls in self._classes.values()):
            return spec
        raise UnknownNameError(
            f"expected a {self.kind} name or config dict, received {spec!r}; "
            f"valid names: {', '.join(self.names())}"
        )
