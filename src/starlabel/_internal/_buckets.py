"""Array sizes rounded up to a few buckets, so that compiled programs are reused.

XLA compiles one program per input shape. A command run on 1,000 stars and then on
1,100 would compile twice (1–3 s each on a CPU) although the persistent compilation
cache holds the first program. Padding the star axis to the next size on a short
ladder (powers of two and 1.5 × powers of two: …, 512, 768, 1024, 1536, 2048, …)
makes similar sizes share a program, at most 50 % padding (33 % on average over a
bucket) and only a handful of programs per decade of sizes. Pixel counts are fixed by the
data and are not bucketed.
"""

from __future__ import annotations

__all__ = ["bucket_size"]


def bucket_size(n: int, *, minimum: int = 1) -> int:
    """Smallest size ≥ ``max(n, minimum)`` of the form 2^k or 3 · 2^(k−1).

    Parameters
    ----------
    n : int
        Number of rows (stars) to hold; ≥ 0.
    minimum : int
        Smallest bucket returned (e.g. 8, so that tiny inputs share one program).

    Returns
    -------
    int
        The bucket: 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, …

    Raises
    ------
    ValueError
        If ``n`` or ``minimum`` is negative, or ``minimum`` is below 1.

    Examples
    --------
    >>> [bucket_size(n) for n in (1, 5, 7, 1000, 1025, 1537)]
    [1, 6, 8, 1024, 1536, 2048]
    """
    if n < 0 or minimum < 1:
        raise ValueError(f"bucket_size needs n ≥ 0 and minimum ≥ 1, got n={n}, minimum={minimum}.")
    target = max(int(n), int(minimum))
    power = 1 << max(0, (target - 1).bit_length())  # smallest 2^k ≥ target
    three_halves = 3 * power // 4  # 1.5 · 2^(k−1): between power/2 and power
    return three_halves if three_halves >= target and power >= 4 else power
