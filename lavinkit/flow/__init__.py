"""Flow matching for LaVin-DiT: t = 0 noise, t = 1 data, ``x_t = t*x1 + (1-t)*x0``, target ``x1 - x0``.

The convention is stated once, in :mod:`lavinkit.flow.path`. Components (YAML ``class_path`` names):

* time samplers: ``lavinkit.flow.UniformTimeSampler``, ``LogitNormalTimeSampler``, ``ShiftedTimeSampler``
* objective: ``lavinkit.flow.FlowMatchingObjective`` (MSE + 0.1 L1 on the velocity by default)
* grids: ``lavinkit.flow.OfficialGrid``, ``UniformGrid``, ``ShiftedGrid`` (``num_steps`` = grid points)
* samplers: ``lavinkit.flow.EulerSampler`` (NFE = N - 1), ``HeunSampler`` (NFE = 2 (N - 1), one fewer with
  ``final_step="euler"``)
* guidance: ``lavinkit.flow.ClassifierFreeGuidance`` (modes auto, batched with ``context_lengths``, two_pass)
"""

from lavinkit.flow.grids import (
    GRIDS,
    OFFICIAL_GRIDS,
    OfficialGrid,
    ShiftedGrid,
    TimeGrid,
    UniformGrid,
    get_grid,
    official_grid,
    shifted_grid,
    uniform_grid,
)
from lavinkit.flow.guidance import (
    ClassifierFreeGuidance,
    build_cfg_batch,
    guided_velocity,
    null_context,
    pad_context,
)
from lavinkit.flow.objective import FlowMatchingObjective, FlowSample, velocity_loss
from lavinkit.flow.path import (
    broadcast_time,
    data_from_velocity,
    interpolate,
    noise_from_velocity,
    shift_time,
    time_from_rectified_flow,
    time_to_rectified_flow,
    velocity_from_rectified_flow,
    velocity_target,
    velocity_to_rectified_flow,
)
from lavinkit.flow.samplers import (
    SAMPLERS,
    EulerSampler,
    HeunSampler,
    ODESampler,
    SampleOutput,
    check_sampler_for_data_estimate,
    euler_sample,
    get_sampler,
    heun_sample,
)
from lavinkit.flow.time_samplers import (
    LogitNormalTimeSampler,
    ShiftedTimeSampler,
    TimeSampler,
    UniformTimeSampler,
)

__all__ = [
    "GRIDS", "OFFICIAL_GRIDS", "OfficialGrid", "ShiftedGrid", "TimeGrid", "UniformGrid", "get_grid", "official_grid",
    "shifted_grid", "uniform_grid",
    "ClassifierFreeGuidance", "build_cfg_batch", "guided_velocity", "null_context", "pad_context",
    "FlowMatchingObjective", "FlowSample", "velocity_loss",
    "broadcast_time", "data_from_velocity", "interpolate", "noise_from_velocity", "shift_time",
    "time_from_rectified_flow", "time_to_rectified_flow", "velocity_from_rectified_flow", "velocity_target",
    "velocity_to_rectified_flow",
    "SAMPLERS", "EulerSampler", "HeunSampler", "ODESampler", "SampleOutput", "check_sampler_for_data_estimate",
    "euler_sample", "get_sampler", "heun_sample",
    "LogitNormalTimeSampler", "ShiftedTimeSampler", "TimeSampler", "UniformTimeSampler",
]  # fmt: skip
