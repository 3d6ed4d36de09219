"""The shared standardisation applied to whole raw batches on the training device (packed-store batches).

A loader worker that standardises a 120 px BigEarthNet patch in numpy spends longer on it than on copying the
raw patch out of the store, so batches from a :mod:`packed store <mosaic_edge.data.store>` travel in raw units
(S1 float32 dB, S2 uint16 reflectance) -- half the bytes for S2 -- and are standardised where the model runs.
:class:`BatchNormaliser` is the batch form of :func:`mosaic_edge.data.preprocess.normalise_sar` /
:func:`~mosaic_edge.data.preprocess.normalise_optical`, operation for operation in float32: non-finite values,
and S2 pixels that are 0 in every band (L2A no-data), become 0 (the band mean); then clip to the contract's
range and ``(x - mean) / std``. ``tests/train/test_normalise.py`` holds it bit-identical to the numpy
preprocessing.
"""

from __future__ import annotations

import torch

from mosaic_edge.contract import Contract


class BatchNormaliser:
    """Standardise raw ``[N, C, H, W]`` batches with a contract's statistics, on ``device``."""

    def __init__(self, contract: Contract, device: torch.device | str = "cpu"):
        dev = torch.device(device)

        def col(values: tuple[float, ...]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=dev).view(1, -1, 1, 1)

        self.sar_mean, self.sar_std = col(contract.sar_mean), col(contract.sar_std)
        self.opt_mean, self.opt_std = col(contract.optical_mean), col(contract.optical_std)
        self.sar_range, self.opt_range = contract.sar_db_range, contract.optical_range

    @staticmethod
    def _standardise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, lo: float, hi: float,
                     nodata_zero: bool) -> torch.Tensor:
        f = x.to(torch.float32, copy=True)
        invalid = ~torch.isfinite(f) if f.dtype == x.dtype else None  # integers are always finite
        if nodata_zero:
            nodata = (f == 0).all(dim=1, keepdim=True)
            invalid = nodata if invalid is None else invalid | nodata
        out = f.clamp_(lo, hi).sub_(mean).div_(std)  # in place on the private copy: (clip(x) - mean) / std
        return out if invalid is None else out.masked_fill_(invalid, 0.0)

    def sar(self, x: torch.Tensor) -> torch.Tensor:
        """S1 backscatter [N, 2, H, W] in dB -> standardised float32."""
        return self._standardise(x, self.sar_mean, self.sar_std, *self.sar_range, nodata_zero=False)

    def optical(self, x: torch.Tensor) -> torch.Tensor:
        """S2 reflectance x 1e4 [N, 12, H, W] (any real dtype; uint16 as int16 bits: see :func:`uint16_to_float`)
        -> standardised float32."""
        return self._standardise(x, self.opt_mean, self.opt_std, *self.opt_range, nodata_zero=True)


def uint16_to_float(bits: torch.Tensor) -> torch.Tensor:
    """float32 values of uint16 data carried as int16 bits (torch's uint16 support is partial on some devices)."""
    f = bits.to(torch.float32)
    return f.add_(65536.0 * (f < 0))
