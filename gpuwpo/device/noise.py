"""Device models: programming noise, drift and read noise, batched over any leading dims.

A *device model* says what happens to one device's conductance: programmed (with programming
noise) towards a target, given a drift coefficient, then drifted and read at an inference time.
:class:`DeviceModel` is the interface; its three methods carry the reference toolkit's names
(aihwkit's ``BaseNoiseModel``) so that its users feel at home:

* ``apply_programming_noise_to_conductance(g_target, generator, z=)``
* ``generate_drift_coefficients(g_target, generator, z=)``
* ``apply_drift_noise_to_conductance(g_prog, nu, t_inference, generator, z=)``

Everything else (the objective's batched hot path, the baseline, :func:`gpuwpo.simulate_weights`)
calls them through :meth:`DeviceModel.prepare_targets`, :meth:`DeviceModel.program`,
:meth:`DeviceModel.drift_coefficients` and :meth:`DeviceModel.drift_and_read`, which a subclass may
not override (``TypeError`` at class creation): the physics of a device is written once, in the
three methods above, and a subclass that overrides one of them reaches every path.
:class:`PCMLikeNoiseModel` also has a fused, in-place transcription of its own formulas for the
hot path; it is used only while none of the three methods is overridden (tests check that the two
agree to round-off), so it can never disagree with them.

The PCM formulas are those of docs/DESIGN.md section 2 (the statistical PCM model of
Nandakumar et al., ICECS 2019, as used by IBM's aihwkit).

All conductances are in micro-Siemens, all times in seconds. Every method works on tensors of
any shape (the leading dimensions are batch dimensions: layers, candidates, time steps, repeats),
returns a tensor of the input's floating dtype on the input's device, and draws its standard
normals from ``generator`` (:mod:`gpuwpo.rng`'s meaning: a ``torch.Generator``, an int seed, or
None for fresh entropy; torch's global generator is never used) -- or takes them from the keyword
``z=`` so that the formulas can be checked exactly (the hot path always passes ``z``, and then
``generator`` is not even looked at).

Which device models the fused Triton kernel implements is an explicit whitelist
(:func:`kernel_physics`): a class declares it in its own body (``kernel_physics = "pcm"``), and a
subclass never inherits the declaration, so a new device model runs the torch path until somebody
writes and tests its kernel.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch

from ..registry import Serializable
from ..rng import make_generator

__all__ = ["DeviceModel", "PCMLikeNoiseModel", "CustomDriftPCMLikeNoiseModel", "PreparedTargets",
           "kernel_physics"]

#: Programming-noise polynomial of Nandakumar et al. (2019); fitted at g_max = 25 uS.
DEFAULT_PROG_COEFF: tuple[float, float, float] = (0.26348, 1.9650, -1.1731)
DEFAULT_PROG_COEFF_G_MAX_REFERENCE = 25.0

# Floor of |g| / g_max before the logarithm of the drift fit (a zero conductance would give
# log(0) = -inf; the clips of mu and sigma make the exact floor irrelevant below ~1e-2).
_G_REL_FLOOR = 1e-7
# Floor of (|g_p| / g_max)^0.65 in the 1/f read-noise amplitude Q, and Q's ceiling.
_Q_DENOM_FLOOR = 1e-3
_Q_MAX = 0.2

TimeLike = float | torch.Tensor

# The methods that define a device's physics (the reference's names), and the hot-path methods
# built from them, which subclasses may not override.
_PHYSICS_METHODS = ("apply_programming_noise_to_conductance", "generate_drift_coefficients",
                    "apply_drift_noise_to_conductance")
_FINAL_METHODS = ("prepare_targets", "program", "drift_coefficients", "drift_and_read")


class PreparedTargets(NamedTuple):
    """Per-target quantities shared by every time step (see ``DeviceModel.prepare_targets``).

    Fields, all ``[...]`` or None: ``g_target`` (uS); for a model with a fused hot path
    (:class:`PCMLikeNoiseModel`) also ``prog_std`` (``prog_noise_scale * sigma_prog``, uS),
    ``drift_mu`` and ``drift_sigma`` (unitless, before ``|.|`` and drift_scale).
    """

    g_target: torch.Tensor
    prog_std: torch.Tensor | None = None
    drift_mu: torch.Tensor | None = None
    drift_sigma: torch.Tensor | None = None


def kernel_physics(noise_model: object) -> str | None:
    """The physics the Triton kernel implements for exactly this device model's class, or None.

    Read from the class's own body (``type(model).__dict__``), never inherited: a subclass
    (a custom drift table, an overridden formula, a new device) is not whitelisted unless it
    declares it.
    """
    return type(noise_model).__dict__.get("kernel_physics")


def _check_finite(name: str, value: object, *, positive: bool = False, nonneg: bool = False):
    """Return ``value`` as a float, raising ValueError naming it if it is not acceptable."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if positive and value <= 0.0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if nonneg and value < 0.0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return value


def _as_float_tensor(x: torch.Tensor | float) -> torch.Tensor:
    """A floating tensor view of ``x`` (integers are promoted to torch's default float dtype)."""
    x = torch.as_tensor(x)
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    return x


def _normal(
    shape: torch.Size,
    like: torch.Tensor,
    generator: torch.Generator | int | None,
    z: torch.Tensor | None,
) -> torch.Tensor:
    """Standard normals of ``shape`` in ``like``'s dtype/device, or the given ``z`` (cast)."""
    if z is not None:
        if isinstance(z, torch.Tensor) and z.dtype == like.dtype and z.device == like.device:
            return z  # the hot path's draws: nothing to cast (and no call to pay for)
        # Cast so that float64 draws never promote a float32 computation (and vice versa).
        return torch.as_tensor(z).to(dtype=like.dtype, device=like.device)
    return torch.randn(shape, generator=make_generator(generator, like.device), dtype=like.dtype,
                       device=like.device)


def _drawing(generator: torch.Generator | int | None, z: torch.Tensor | None,
             like: torch.Tensor) -> torch.Generator | int | None:
    """The generator a physics method draws from: made once here (an int seed, None's fresh
    entropy) when it will draw, so a subclass's method never hands None to torch (its global
    generator); untouched when ``z`` is given (the hot path: no work per call)."""
    return generator if z is not None else make_generator(generator, like.device)


class DeviceModel(Serializable):
    """Interface of a device model: what programming, drift and reading do to a conductance.

    A subclass defines the three methods with the reference's names (below) and the attribute
    ``g_max`` (uS); it may add a ``to_dict``-able set of constructor arguments. It must not
    override the hot-path methods :meth:`prepare_targets`, :meth:`program`,
    :meth:`drift_coefficients` and :meth:`drift_and_read` (a ``TypeError`` says so when the
    class is created): they are how every path of gpuwpo -- the batched objective, the baseline,
    :func:`gpuwpo.simulate_weights` -- reaches the three methods, so a device written once works
    everywhere. Every method takes explicit standard normals ``z`` (the objective's common random
    numbers and chunk-independent noise depend on it) or draws them from ``generator`` (a
    ``torch.Generator``, an int seed, or None for fresh entropy, :mod:`gpuwpo.rng`); the
    hot-path methods hand the three physics methods a ``torch.Generator`` whenever they draw.

    The Triton kernel never runs a device model that is not whitelisted by name in its own class
    body (see :func:`kernel_physics`).
    """

    g_max: float
    _abstract = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        overridden = [name for name in _FINAL_METHODS if name in cls.__dict__]
        if overridden and not cls.__dict__.get("_defines_fast_path", False):
            raise TypeError(
                f"{cls.__name__} overrides {', '.join(overridden)}: a device model defines its "
                f"physics in {', '.join(_PHYSICS_METHODS)} only; the hot path calls them")

    # -- the physics (the reference's names) -----------------------------------------------
    def apply_programming_noise_to_conductance(
        self, g_target: torch.Tensor, generator: torch.Generator | int | None = None, *,
        z: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Programmed conductances (uS) for targets ``g_target`` (uS, ``[...]``)."""
        raise NotImplementedError

    def generate_drift_coefficients(
        self, g_target: torch.Tensor, generator: torch.Generator | int | None = None, *,
        z: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-device drift parameters drawn from the TARGET conductances (``[...]``)."""
        raise NotImplementedError

    def apply_drift_noise_to_conductance(
        self, g_prog: torch.Tensor, nu: torch.Tensor, t_inference: TimeLike,
        generator: torch.Generator | int | None = None, *, z: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Conductances (uS) read ``t_inference`` seconds after programming ended."""
        raise NotImplementedError

    # -- the hot path (final: built from the three methods above) ---------------------------
    def _fast_path(self) -> bool:
        """Whether a fused transcription of the three methods may replace them (see PCM)."""
        return False

    def prepare_targets(self, g_target: torch.Tensor) -> PreparedTargets:
        """What depends only on the targets (``[...]``, uS), computed once for all time steps."""
        return PreparedTargets(_as_float_tensor(g_target))

    def program(self, prepared: PreparedTargets, z: torch.Tensor | None = None,
                generator: torch.Generator | int | None = None, *,
                out: torch.Tensor | None = None) -> torch.Tensor:
        """Programmed conductances of the prepared targets, ``broadcast([...], z.shape)``.

        ``out``: a tensor of that shape and dtype that a fused path may write the result into
        (a caller's work buffer, reused over time steps); a model without one returns a new
        tensor, so use the return value either way.
        """
        g = prepared.g_target
        return self.apply_programming_noise_to_conductance(g, _drawing(generator, z, g), z=z)

    def drift_coefficients(self, prepared: PreparedTargets, z: torch.Tensor | None = None,
                           generator: torch.Generator | int | None = None, *,
                           out: torch.Tensor | None = None) -> torch.Tensor:
        """Drift coefficients drawn from the prepared targets, ``broadcast([...], z.shape)``
        (``out`` as for :meth:`program`)."""
        g = prepared.g_target
        return self.generate_drift_coefficients(g, _drawing(generator, z, g), z=z)

    def drift_and_read(self, g_read: torch.Tensor, nu: torch.Tensor, t_inference: TimeLike,
                       z: torch.Tensor | None = None,
                       generator: torch.Generator | int | None = None, *,
                       out: torch.Tensor | None = None,
                       overwrite: bool = False) -> torch.Tensor:
        """Conductances ``g_read`` (uS) drifted with ``nu`` and read at ``t_inference`` s.

        ``out`` as for :meth:`program`; ``overwrite``: ``nu`` is the caller's temporary, which
        a fused path may overwrite (it is not used afterwards). Neither changes a value.
        """
        if z is None:
            generator = _drawing(generator, z, torch.as_tensor(g_read))
        return self.apply_drift_noise_to_conductance(g_read, nu, t_inference, generator, z=z)

    def program_drift_read_step(
        self,
        prepared: PreparedTargets,
        t_inference: TimeLike,
        z_prog: torch.Tensor | None = None,
        z_drift: torch.Tensor | None = None,
        z_read: torch.Tensor | None = None,
        generator: torch.Generator | int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Program the prepared targets, draw nu, drift and read the programmed devices.

        The device physics of one time step (docs/DESIGN.md section 2): ``(g_prog, g_t)``. The
        noises not given are drawn in that order from one generator (an int seed makes it once,
        so the three noises are not the same numbers).
        """
        if z_prog is None or z_drift is None or z_read is None:
            generator = make_generator(generator, prepared.g_target.device)
        g_prog = self.program(prepared, z_prog, generator)
        nu = self.drift_coefficients(prepared, z_drift, generator)
        return g_prog, self.drift_and_read(g_prog, nu, t_inference, z_read, generator)


class PCMLikeNoiseModel(DeviceModel):
    r"""Statistical PCM model: programming noise, conductance drift and 1/f read noise.

    Args:
        prog_coeff: coefficients ``(c0, c1, c2)`` of the programming-noise polynomial
            ``sigma_prog(g) = (c0 + c1 (g/g_max) + c2 (g/g_max)^2) * g_max / g_ref`` in uS.
            ``None`` gives the published fit ``(0.26348, 1.9650, -1.1731)``.
        g_max: maximum conductance of the converter in uS (> 0).
        t_read: read pulse duration of the 1/f noise fit in seconds (> 0).
        t_0: first reading time of the drift fit in seconds (> 0); inference times count from
            the end of programming, so the drift clock is ``t' = t + t_0``.
        prog_noise_scale, read_noise_scale, drift_scale: multipliers (>= 0) of the programming
            noise, the read noise and the drift coefficient.
        prog_coeff_g_max_reference: the g_max (uS) at which ``prog_coeff`` was fitted,
            ``g_ref`` above. Defaults to 25.0 for the default coefficients and to ``g_max`` for
            user-given ones.

    Raises:
        ValueError: on any argument outside the ranges above, naming the bad value.
    """

    is_custom_drift: bool = False
    #: The Triton kernel implements exactly this class's formulas (see :func:`kernel_physics`).
    kernel_physics = "pcm"

    def __init__(
        self,
        prog_coeff: Sequence[float] | None = None,
        g_max: float = 25.0,
        t_read: float = 250e-9,
        t_0: float = 20.0,
        prog_noise_scale: float = 1.0,
        read_noise_scale: float = 1.0,
        drift_scale: float = 1.0,
        prog_coeff_g_max_reference: float | None = None,
    ) -> None:
        self.g_max = _check_finite("g_max", g_max, positive=True)
        self.t_read = _check_finite("t_read", t_read, positive=True)
        self.t_0 = _check_finite("t_0", t_0, positive=True)
        self.prog_noise_scale = _check_finite("prog_noise_scale", prog_noise_scale, nonneg=True)
        self.read_noise_scale = _check_finite("read_noise_scale", read_noise_scale, nonneg=True)
        self.drift_scale = _check_finite("drift_scale", drift_scale, nonneg=True)

        if prog_coeff is None:
            self.prog_coeff = DEFAULT_PROG_COEFF
            default_ref = DEFAULT_PROG_COEFF_G_MAX_REFERENCE
        else:
            if isinstance(prog_coeff, (str, bytes)) or not isinstance(prog_coeff, Sequence):
                raise ValueError(
                    f"prog_coeff must be a sequence of 3 numbers (c0, c1, c2), got {prog_coeff!r}"
                )
            if len(prog_coeff) != 3:
                raise ValueError(
                    f"prog_coeff must have exactly 3 coefficients (c0, c1, c2), "
                    f"got {len(prog_coeff)}: {list(prog_coeff)!r}"
                )
            self.prog_coeff = tuple(
                _check_finite(f"prog_coeff[{i}]", c) for i, c in enumerate(prog_coeff)
            )
            # A user fit is taken to be made at this converter's g_max (as in aihwkit).
            default_ref = self.g_max
        if prog_coeff_g_max_reference is None:
            self.g_ref = default_ref
        else:
            self.g_ref = _check_finite(
                "prog_coeff_g_max_reference", prog_coeff_g_max_reference, positive=True
            )

    def _params(self) -> dict[str, Any]:
        return {"prog_coeff": list(self.prog_coeff), "g_max": self.g_max, "t_read": self.t_read,
                "t_0": self.t_0, "prog_noise_scale": self.prog_noise_scale,
                "read_noise_scale": self.read_noise_scale, "drift_scale": self.drift_scale,
                "prog_coeff_g_max_reference": self.g_ref}

    # aihwkit spells the reference conductance this way; keep the alias for its users.
    @property
    def prog_coeff_g_max_reference(self) -> float:
        """Alias of :attr:`g_ref` (aihwkit's name)."""
        return self.g_ref

    def _kwargs_repr(self) -> str:
        return (
            f"prog_coeff={self.prog_coeff}, g_max={self.g_max}, t_read={self.t_read}, "
            f"t_0={self.t_0}, prog_noise_scale={self.prog_noise_scale}, "
            f"read_noise_scale={self.read_noise_scale}, drift_scale={self.drift_scale}, "
            f"prog_coeff_g_max_reference={self.g_ref}"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._kwargs_repr()})"

    # ----------------------------------------------------------------------------------------
    # programming
    def programming_noise_std(self, g_target: torch.Tensor) -> torch.Tensor:
        """``sigma_prog(g)`` in uS, same shape as ``g_target`` (not yet scaled).

        Note the polynomial may turn negative far above g_max; it multiplies a symmetric draw,
        so only its magnitude matters (as in the reference).
        """
        g = _as_float_tensor(g_target)
        c0, c1, c2 = self.prog_coeff
        x = g / self.g_max
        # (c0 + x (c1 + x c2)) (g_max / g_ref), each step in place in one new tensor.
        return torch.mul(x, c2).add_(c1).mul_(x).add_(c0).mul_(self.g_max / self.g_ref)

    def apply_programming_noise_to_conductance(self, g_target: torch.Tensor,
                                               generator: torch.Generator | int | None = None, *,
                                               z: torch.Tensor | None = None) -> torch.Tensor:
        """Programmed conductances ``g_p = max(0, g + prog_noise_scale * sigma_prog(g) * z)``.

        ``g_target`` in uS ``[...]``; ``z``: standard normals broadcastable with it (drawn from
        ``generator`` when None). Returns ``g_p`` in uS, shape ``broadcast([...], z.shape)``,
        dtype/device of ``g_target``.
        """
        g = _as_float_tensor(g_target)
        sigma = self.programming_noise_std(g)
        z = _normal(g.shape, g, generator, z)
        return torch.clamp(g + (self.prog_noise_scale * sigma) * z, min=0.0)

    # ----------------------------------------------------------------------------------------
    # drift coefficient
    def drift_mean_std(self, g_target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and spread ``(mu, sigma)`` of the drift coefficient, clips applied.

        Args:
            g_target: target conductances in uS, shape ``[...]``.

        Returns:
            ``(mu, sigma)``, each of shape ``[...]`` (unitless), before ``|.|`` and drift_scale.
        """
        g = _as_float_tensor(g_target)
        # The same operations as written, in place where a temporary allows it.
        log_g_rel = torch.abs(g).div_(self.g_max).clamp_(min=_G_REL_FLOOR).log_()
        mu = torch.mul(log_g_rel, -0.0155).add_(0.0244).clamp_(min=0.049, max=0.1)
        sigma = log_g_rel.mul_(-0.0125).sub_(0.0059).clamp_(min=0.008, max=0.045)
        return mu, sigma

    def generate_drift_coefficients(self, g_target: torch.Tensor,
                                    generator: torch.Generator | int | None = None, *,
                                    z: torch.Tensor | None = None) -> torch.Tensor:
        """Drift coefficients ``nu = |mu(g) + sigma(g) z| * drift_scale`` of the TARGET g.

        ``g_target`` in uS ``[...]``; ``z`` as for the programming noise. Returns ``nu``
        (unitless, >= 0), shape ``broadcast([...], z.shape)``.
        """
        g = _as_float_tensor(g_target)
        mu, sigma = self.drift_mean_std(g)
        z = _normal(g.shape, g, generator, z)
        return torch.abs(mu + sigma * z) * self.drift_scale

    # ----------------------------------------------------------------------------------------
    # drift and read noise at inference time
    def apply_drift_noise_to_conductance(
        self,
        g_prog: torch.Tensor,
        nu: torch.Tensor,
        t_inference: TimeLike,
        generator: torch.Generator | int | None = None,
        *,
        z: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Conductances at ``t_inference`` seconds after programming: drift, then 1/f read noise.

        ``t' = t + t_0``; ``g_d = g_p (t'/t_0)^(-nu)`` where ``t' > t_0`` (else ``g_p``);
        ``Q = min(0.2, 0.0088 / max((|g_p|/g_max)^0.65, 1e-3))``;
        ``sigma_read = Q sqrt(ln((t' + t_read) / (2 t_read)))``;
        ``g_t = max(0, g_d + |g_d| * read_noise_scale * sigma_read * z)``.

        Args:
            g_prog: programmed conductances in uS, shape ``[...]``.
            nu: drift coefficients, broadcastable with ``g_prog``.
            t_inference: seconds (>= 0) after programming; a float, or a tensor that
                broadcasts with ``g_prog`` (e.g. ``[T, 1, 1]`` against ``[2K, N]`` gives
                ``[T, 2K, N]``). Negative tensor entries are not checked (that would need a
                device synchronisation); they mean "no drift" like t = 0.
            generator: source of the standard normals when ``z`` is not given; they are drawn
                with the broadcast shape of ``g_prog``, ``nu`` and ``t_inference``.
            z: standard-normal draws broadcastable with that shape.

        Returns:
            ``g_t`` in uS, the broadcast shape, dtype/device of ``g_prog``.
        """
        g_p = _as_float_tensor(g_prog)
        nu = torch.as_tensor(nu).to(dtype=g_p.dtype, device=g_p.device)

        if isinstance(t_inference, torch.Tensor):
            # Time arithmetic in float64 where possible: t' / (2 t_read) reaches ~1e14 for years.
            t = t_inference.to(device=g_p.device, dtype=torch.float64)
            t_prime = t + self.t_0
            time_ratio = (t_prime / self.t_0).to(g_p.dtype)
            read_log = torch.log((t_prime + self.t_read) / (2.0 * self.t_read))
            read_factor = torch.sqrt(read_log).to(g_p.dtype)
            # No drift before the first reading (t' <= t_0); (t'/t_0)^-nu would grow instead.
            drift_factor = torch.where(
                t_prime > self.t_0, torch.pow(time_ratio, -nu), torch.ones_like(time_ratio)
            )
            out_shape = torch.broadcast_shapes(g_p.shape, nu.shape, t.shape)
        else:
            t = _check_finite("t_inference", t_inference, nonneg=True)
            t_prime = t + self.t_0
            read_factor = math.sqrt(math.log((t_prime + self.t_read) / (2.0 * self.t_read)))
            drift_factor = torch.pow(t_prime / self.t_0, -nu) if t_prime > self.t_0 else None
            out_shape = torch.broadcast_shapes(g_p.shape, nu.shape)

        g_d = g_p if drift_factor is None else g_p * drift_factor
        # Q uses the PROGRAMMED conductance, not the drifted one (as in the reference).
        q = torch.clamp(
            0.0088 / torch.clamp((g_p.abs() / self.g_max) ** 0.65, min=_Q_DENOM_FLOOR),
            max=_Q_MAX,
        )
        sigma_read = q * read_factor
        z = _normal(out_shape, g_p, generator, z)
        return torch.clamp(g_d + g_d.abs() * (self.read_noise_scale * sigma_read) * z, min=0.0)

    # ----------------------------------------------------------------------------------------
    # hot path: a fused, in-place transcription of the three methods above
    _defines_fast_path = True

    def _fast_path(self) -> bool:
        """True while the three physics methods are this class's own (not overridden).

        The fused code below transcribes them; a subclass that overrides one of them (or the
        formula of the read noise inside it) gets the generic path, which calls its methods.
        ``programming_noise_std`` and ``drift_mean_std`` may be overridden freely: the fused
        path calls them too.
        """
        cls = type(self)
        ok = _FAST_PATH_CACHE.get(cls)
        if ok is None:
            ok = all(getattr(cls, name) is getattr(PCMLikeNoiseModel, name)
                     for name in _PHYSICS_METHODS)
            _FAST_PATH_CACHE[cls] = ok
        return ok

    def prepare_targets(self, g_target: torch.Tensor) -> PreparedTargets:
        """Per-target quantities for all time steps: targets, programming std, drift mu/sigma."""
        if not self._fast_path():
            return DeviceModel.prepare_targets(self, g_target)
        g = _as_float_tensor(g_target)
        mu, sigma = self.drift_mean_std(g)
        std = self.programming_noise_std(g)
        # x * 1.0 is x exactly: the usual unscaled model skips a pass.
        return PreparedTargets(g, std if self.prog_noise_scale == 1.0
                               else self.prog_noise_scale * std, mu, sigma)

    def program(self, prepared: PreparedTargets, z: torch.Tensor | None = None,
                generator: torch.Generator | int | None = None, *,
                out: torch.Tensor | None = None) -> torch.Tensor:
        """``g_p = max(0, g + prog_noise_scale * sigma_prog(g) * z)``, fused."""
        if not self._fast_path():
            return DeviceModel.program(self, prepared, z, generator)
        g = prepared.g_target
        z = _normal(g.shape, g, generator, z)
        return torch.addcmul(g, prepared.prog_std, z, out=_fits(out, g, z)).clamp_(min=0.0)

    def drift_coefficients(self, prepared: PreparedTargets, z: torch.Tensor | None = None,
                           generator: torch.Generator | int | None = None, *,
                           out: torch.Tensor | None = None) -> torch.Tensor:
        """``nu = |mu(g) + sigma(g) z| * drift_scale``, fused."""
        if not self._fast_path():
            return DeviceModel.drift_coefficients(self, prepared, z, generator)
        g = prepared.g_target
        z = _normal(g.shape, g, generator, z)
        nu = torch.addcmul(prepared.drift_mu, prepared.drift_sigma, z,
                           out=_fits(out, prepared.drift_mu, z)).abs_()
        return nu if self.drift_scale == 1.0 else nu.mul_(self.drift_scale)

    def _time_factors(self, t_inference: float) -> tuple[float, float]:
        """``(ln(t'/t0), sqrt(ln((t' + t_read) / (2 t_read))))`` of one time in seconds (>= 0).

        With t' = t + t0 >= t0, ln(t'/t0) = log1p(t/t0) >= 0 and is 0 exactly when there is no
        drift yet, so the drift needs no branch. The check is written with comparisons (not
        ``math.isfinite``) so that torch.compile traces it.
        """
        if isinstance(t_inference, bool) or not isinstance(t_inference, (int, float)):
            _check_finite("t_inference", t_inference, nonneg=True)  # raises, naming the value
        t = float(t_inference)
        if not 0.0 <= t < math.inf:
            raise ValueError(f"t_inference must be finite and >= 0, got {t_inference!r}")
        return (math.log1p(t / self.t_0),
                math.sqrt(math.log((t + self.t_0 + self.t_read) / (2.0 * self.t_read))))

    def drift_and_read(self, g_read: torch.Tensor, nu: torch.Tensor, t_inference: TimeLike,
                       z: torch.Tensor | None = None,
                       generator: torch.Generator | int | None = None, *,
                       out: torch.Tensor | None = None,
                       overwrite: bool = False) -> torch.Tensor:
        """Drift and 1/f read noise of conductances ``g_read >= 0`` at one time, fused.

        Exactly :meth:`apply_drift_noise_to_conductance` for a single time (a float or a 0-d
        tensor), written as few in-place passes as possible (each pass over the data costs as
        much as the arithmetic in it, and every new tensor an allocation): the drift factor in
        ``nu``'s storage when ``overwrite``, the read factor in ``out`` when it fits. A time
        tensor with dimensions takes the generic path.
        """
        multi_time = isinstance(t_inference, torch.Tensor) and t_inference.ndim > 0
        if multi_time or not self._fast_path():
            return DeviceModel.drift_and_read(self, g_read, nu, t_inference, z, generator)
        g = g_read
        if isinstance(t_inference, torch.Tensor):
            t = t_inference.to(device=g.device, dtype=torch.float64)
            log_ratio = torch.log1p(t / self.t_0).to(g.dtype)
            read_factor = torch.sqrt(
                torch.log((t + self.t_0 + self.t_read) / (2.0 * self.t_read))).to(g.dtype)
        else:
            log_ratio, read_factor = self._time_factors(t_inference)
        shape = g.shape if g.shape == nu.shape else torch.broadcast_shapes(g.shape, nu.shape)
        z = _normal(shape, g, generator, z)
        if z.shape != shape:
            shape = torch.broadcast_shapes(shape, z.shape)
        # g_d = g (t'/t0)^(-nu) = g exp(-nu ln(t'/t0))
        factor = (nu.mul_(-log_ratio) if overwrite and nu.shape == shape
                  else torch.mul(nu, -log_ratio))
        g_d = _into(factor.exp_(), g, shape)
        # Q = min(0.2, 0.0088 / max((g/g_max)^0.65, 1e-3)) = c min(g^-0.65, 0.2 / c) with
        # c = 0.0088 g_max^0.65: where the floor 1e-3 engages, 0.0088 / 1e-3 = 8.8 is capped at
        # 0.2 anyway. g_t = max(0, g_d + |g_d| s Q z) = max(0, g_d (1 + s c q z)) as g_d >= 0.
        c = 0.0088 * self.g_max**0.65
        # exp(-0.65 ln g) is faster than pow on the CPU. Below g_cap = (c / 0.2)^(1 / 0.65) the
        # cap engages, so g is floored at half of it first: the same q everywhere, and no
        # log(0) = -inf or exp(inf), which the CPU's vector log and exp take a slow path for
        # (many programmed conductances are exactly 0).
        g_floor = 0.5 * (c / _Q_MAX) ** (1.0 / 0.65)
        q = torch.clamp(g, min=g_floor, out=_fits(out, g))
        q = _into(q.log_().mul_(-0.65).exp_().clamp_(max=_Q_MAX / c), z, shape)
        g_t = q.mul_(read_factor * (self.read_noise_scale * c)).add_(1.0)
        return _into(g_t, g_d, shape).clamp_(min=0.0)


#: Per class: may the fused hot path replace its physics methods (see ``_fast_path``).
_FAST_PATH_CACHE: dict[type, bool] = {}


def _into(a: torch.Tensor, b: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``a * b`` of the broadcast ``shape``, in place in ``a`` when ``a`` already has it."""
    return a.mul_(b) if a.shape == shape else a * b


def _fits(out: torch.Tensor | None, *inputs: torch.Tensor) -> torch.Tensor | None:
    """``out`` when it can hold the result of an op on ``inputs`` (their broadcast shape and
    dtype, a separate tensor), else None: then the op makes a new tensor."""
    if out is None or any(out is x for x in inputs):
        return None
    shape = inputs[0].shape
    for x in inputs[1:]:
        if x.shape != shape:
            shape = torch.broadcast_shapes(shape, x.shape)
    return out if out.shape == shape and out.dtype == inputs[0].dtype else None


_CUSTOM_DRIFT_KEYS = ("g_lst", "nu_mean_lst", "nu_std_lst")


class CustomDriftPCMLikeNoiseModel(PCMLikeNoiseModel):
    """A :class:`PCMLikeNoiseModel` whose drift mean and spread come from user tables.

    ``mu(g)`` and ``sigma(g)`` are the linear interpolations of ``nu_mean_lst`` and
    ``nu_std_lst`` over ``g_lst`` (uS) at the target conductance, clipped to the table's range
    (np.interp semantics, computed in torch for any batch shape); then
    ``nu = |mu + sigma z| * drift_scale``. Programming and read noise are unchanged.

    Args:
        custom_drift_model: mapping with the keys ``g_lst`` (conductances in uS, >= 0, strictly
            ascending), ``nu_mean_lst`` and ``nu_std_lst`` (>= 0), all of the same length >= 2
            and all finite.
        **kwargs: as for :class:`PCMLikeNoiseModel`.

    Raises:
        ValueError: on a malformed table (naming the problem) or a bad keyword argument.
    """

    is_custom_drift: bool = True

    def __init__(self, custom_drift_model: Mapping[str, Sequence[float]], **kwargs) -> None:
        super().__init__(**kwargs)
        tables = self._validate_table(custom_drift_model)
        self.custom_drift_model = {
            k: list(map(float, v)) for k, v in zip(_CUSTOM_DRIFT_KEYS, tables)
        }
        # Master copy in float64 on the CPU; per (dtype, device) copies are cached on first use
        # so the hot path never converts lists.
        self._table64 = torch.tensor(tables, dtype=torch.float64)  # [3, L]
        self._table_cache: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    @staticmethod
    def _validate_table(model: object) -> list[list[float]]:
        if not isinstance(model, Mapping):
            raise ValueError(
                f"custom_drift_model must be a dict with keys {list(_CUSTOM_DRIFT_KEYS)}, "
                f"got {type(model).__name__}"
            )
        missing = [k for k in _CUSTOM_DRIFT_KEYS if k not in model]
        if missing:
            raise ValueError(
                f"custom_drift_model is missing key(s) {missing}; "
                f"required: {list(_CUSTOM_DRIFT_KEYS)}"
            )
        tables = []
        for key in _CUSTOM_DRIFT_KEYS:
            values = model[key]
            if isinstance(values, torch.Tensor):
                values = values.detach().cpu().reshape(-1).tolist()
            try:
                values = [float(v) for v in values]
            except (TypeError, ValueError) as err:
                raise ValueError(
                    f"custom_drift_model[{key!r}] must be a list of numbers, got {values!r}"
                ) from err
            bad = [v for v in values if not math.isfinite(v)]
            if bad:
                raise ValueError(f"custom_drift_model[{key!r}] has non-finite values {bad}")
            tables.append(values)
        lengths = {k: len(v) for k, v in zip(_CUSTOM_DRIFT_KEYS, tables)}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"custom_drift_model lists must have the same length, got {lengths}")
        if lengths["g_lst"] < 2:
            raise ValueError(f"custom_drift_model needs at least 2 points, got {lengths['g_lst']}")
        g_lst, _, nu_std_lst = tables
        for i in range(len(g_lst) - 1):
            if not g_lst[i + 1] > g_lst[i]:
                raise ValueError(
                    "custom_drift_model['g_lst'] must be strictly ascending, but "
                    f"g_lst[{i}] = {g_lst[i]} >= g_lst[{i + 1}] = {g_lst[i + 1]}"
                )
        if g_lst[0] < 0.0:
            raise ValueError(
                f"custom_drift_model['g_lst'] must hold conductances >= 0, got {g_lst[0]}"
            )
        negative = [v for v in nu_std_lst if v < 0.0]
        if negative:
            raise ValueError(f"custom_drift_model['nu_std_lst'] must be >= 0, got {negative}")
        return tables

    def _params(self) -> dict[str, Any]:
        return {"custom_drift_model": {k: list(v) for k, v in self.custom_drift_model.items()},
                **super()._params()}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(custom_drift_model={self.custom_drift_model!r}, "
            f"{self._kwargs_repr()})"
        )

    def _table(self, like: torch.Tensor) -> torch.Tensor:
        key = (like.dtype, like.device)
        table = self._table_cache.get(key)
        if table is None:
            table = self._table64.to(dtype=like.dtype, device=like.device)
            self._table_cache[key] = table
        return table

    def drift_mean_std(self, g_target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Interpolated ``(mu, sigma)`` of the drift coefficient at ``g_target`` (uS, ``[...]``).

        Returns:
            ``(mu, sigma)``, each of shape ``[...]``.
        """
        g = _as_float_tensor(g_target)
        table = self._table(g)
        g_lst, mean_lst, std_lst = table[0], table[1], table[2]
        g = torch.clamp(g, min=g_lst[0], max=g_lst[-1])
        # Index of the left table point of each g's segment; the last point belongs to the last
        # segment (frac = 1 there) so idx + 1 never runs past the table.
        idx = torch.searchsorted(g_lst, g.contiguous(), right=True) - 1
        idx = torch.clamp(idx, min=0, max=g_lst.numel() - 2)
        g0 = g_lst[idx]
        frac = (g - g0) / (g_lst[idx + 1] - g0)
        mu = torch.lerp(mean_lst[idx], mean_lst[idx + 1], frac)
        sigma = torch.lerp(std_lst[idx], std_lst[idx + 1], frac)
        return mu, sigma
