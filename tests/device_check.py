"""A stand-in accelerator for CPU-only machines: device discipline tested with real numbers.

On a GPU, a tensor made on the host (``torch.tensor([x])``, ``torch.arange(n)``, a CPU
``torch.Generator``) meeting one on the job's device fails ("Expected all tensors to be on the
same device"), and ``.numpy()`` of a device tensor fails; on a CPU-only machine every tensor is
on the CPU and such code passes. :func:`stand_in_accelerator` makes a second device appear:
tensors on the ``meta`` device that carry real CPU values (:class:`OnDevice`), so whole jobs run
and give real numbers while every operator checks its operands as CUDA does:

- an operand on the CPU (other than a 0-dim scalar, which CUDA accepts) with one on the device
  raises :class:`DeviceMismatchError` (copies, ``.to()`` and indexing with CPU indices, which
  CUDA accepts too, excepted);
- a CPU generator passed to an operator that makes a tensor on the device raises;
- ``.numpy()`` of a device tensor raises ``TypeError``, as for a CUDA tensor.

``meta`` stands in for ``cuda`` because autograd needs a device guard for a tensor's device,
and ``meta`` has one on every machine (a fake ``cuda`` tensor crashes the autograd engine on a
machine without a driver), so training steps run too. PyTorch's ``FakeTensorMode`` checks
devices the same way but carries no values, so it stops at the first data-dependent branch
(``if loss.isfinite()``, ``.item()``, ``int(k)``) and cannot run a job.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

DEVICE = torch.device("meta")
aten = torch.ops.aten

#: operators CUDA runs with operands on the CPU and on the device: copies and indexing
MIXED_DEVICES_ALLOWED = {
    aten.copy_.default,
    aten._to_copy.default,
    aten.to.dtype_layout,
    aten.to.device,
    aten.to.other,
    aten.to.dtype,
    aten.index.Tensor,
    aten.index_put_.default,
    aten.index_put.default,
    aten._index_put_impl_.default,
    aten.lift_fresh.default,
}


class DeviceMismatchError(RuntimeError):
    """An operator met operands on two devices (or a CPU generator for a device tensor)."""


class OnDevice(torch.Tensor):
    """A tensor on the stand-in device; ``elem`` holds its values on the CPU."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor) -> OnDevice:
        with torch.inference_mode(elem.is_inference()):  # a view of a normal tensor is a normal tensor
            tensor = torch.Tensor._make_wrapper_subclass(
                cls,
                elem.size(),
                strides=elem.stride(),
                storage_offset=elem.storage_offset(),
                dtype=elem.dtype,
                layout=elem.layout,
                device=DEVICE,
                requires_grad=elem.requires_grad,
            )
        tensor.elem = elem
        return tensor

    __torch_function__ = torch._C._disabled_torch_function_impl

    def __repr__(self) -> str:  # type: ignore[override]
        return f"OnDevice({self.elem!r})"

    def numpy(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        raise TypeError(
            f"can't convert {DEVICE} (stand-in accelerator) device type tensor to numpy. Use Tensor.cpu() to copy "
            "the tensor to host memory first."
        )

    def tolist(self) -> Any:  # type: ignore[override]
        return self.elem.tolist()

    @property
    def is_meta(self) -> bool:  # type: ignore[override]
        """Not a tensor without values (``load_state_dict`` skips those)."""
        return False

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        raise RuntimeError(f"{func} reached a stand-in device tensor outside stand_in_accelerator()")


def _on_device(device: Any) -> bool:
    return device is not None and torch.device(device).type == DEVICE.type


def _where(tensor: torch.Tensor) -> str:
    return f"{'device' if isinstance(tensor, OnDevice) else tensor.device.type}{list(tensor.shape)}"


class _ListIndices(TorchFunctionMode):
    """``x[[0, 2]]``: PyTorch turns the list into an index tensor on ``x``'s device below the
    dispatcher (no values on the stand-in device); make it a CPU index tensor first, as CUDA takes."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is torch.Tensor.__getitem__ and isinstance(args[0], OnDevice) and isinstance(args[1], list):
            args = (args[0], torch.as_tensor(args[1]), *args[2:])
        return func(*args, **(kwargs or {}))


class _Checking(TorchDispatchMode):
    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = dict(kwargs or {})
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if any(t.device == DEVICE and not isinstance(t, OnDevice) for t in tensors):
            raise RuntimeError(f"{func}: an operand was made on the stand-in device below the dispatcher (no values)")
        on_device = any(isinstance(t, OnDevice) for t in tensors)
        on_host = [t for t in tensors if not isinstance(t, OnDevice) and t.dim() > 0]
        if on_device and on_host and func not in MIXED_DEVICES_ALLOWED:
            raise DeviceMismatchError(
                f"Expected all tensors to be on the same device, but {func} got "
                + ", ".join(_where(t) for t in tensors)
            )
        moves = func.overloadpacket in (aten.to, aten._to_copy)
        if moves and func is aten.to.other:  # x.to(other): other's device
            out_on_device = isinstance(args[1], OnDevice)
        elif "device" in kwargs and kwargs["device"] is not None:
            out_on_device = _on_device(kwargs["device"])
            if out_on_device:
                kwargs["device"] = torch.device("cpu")
        elif moves and len(args) > 1 and isinstance(args[1], (torch.device, str)):  # x.to(device, ...)
            out_on_device = _on_device(args[1])
            if out_on_device:
                args = (args[0], torch.device("cpu"), *args[2:])
        elif func in MIXED_DEVICES_ALLOWED and args:  # copies and indexing: where the first operand is
            out_on_device = isinstance(args[0], OnDevice)
        else:
            out_on_device = on_device
        generator = kwargs.get("generator")
        if generator is not None and out_on_device and generator.device.type == "cpu":
            raise DeviceMismatchError(f"Expected a generator of the device, but {func} got a CPU generator")
        wrappers: dict[int, OnDevice] = {}

        def unwrap(value: Any) -> Any:
            if isinstance(value, OnDevice):
                wrappers[id(value.elem)] = value
                return value.elem
            return value

        out = func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs))

        def wrap(value: Any) -> Any:
            if not isinstance(value, torch.Tensor):
                return value
            if id(value) in wrappers:  # an operand returned (in place, or .to() without a change)
                return wrappers[id(value)] if out_on_device else value.clone()
            return OnDevice(value) if out_on_device else value

        return tree_map(wrap, out)


@contextmanager
def stand_in_accelerator() -> Iterator[torch.device]:
    """Inside the block, ``DEVICE`` (yielded) behaves as an accelerator with real values (module docstring)."""
    overwrite = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(True)  # module.to(DEVICE) swaps the parameters
    constructors = {name: getattr(torch, name) for name in ("tensor", "as_tensor")}
    for name, make in constructors.items():
        setattr(torch, name, _made_on_host(make))
    try:
        with _ListIndices(), _Checking():
            yield DEVICE
    finally:
        for name, make in constructors.items():
            setattr(torch, name, make)
        torch.__future__.set_overwrite_module_params_on_conversion(overwrite)


def _made_on_host(make: Any) -> Any:
    """``torch.tensor(data, device=DEVICE)`` made on the CPU, then moved: PyTorch builds a tensor
    from data on its device below the dispatcher, where the stand-in device would get no values."""

    def constructor(*args: Any, device: Any = None, **kwargs: Any) -> torch.Tensor:
        if not _on_device(device):
            return make(*args, device=device, **kwargs)
        return make(*args, **kwargs).to(DEVICE)

    return constructor
