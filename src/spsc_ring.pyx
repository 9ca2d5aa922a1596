# cython: language_level=3, embedsignature=True
"""Lock-free single-producer/single-consumer ring of uint64 values.

The C-level API (struct + inline nogil functions) lives in ``spsc_ring.pxd``;
this module adds the Python class :class:`SpscRing`, whose blocking calls
wait without holding the GIL (short spin, ~100 us of ``sched_yield``, then
``nanosleep`` back-off growing up to ~1 ms).
"""

from cpython.exc cimport PyErr_CheckSignals
from libc.stdint cimport uint64_t
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, nanosleep, timespec

import operator

# The C API lives in src/spsc_ring.pxd (found through the "src" include path).
from spsc_ring cimport (
    recs_cpu_relax,
    spsc_close,
    spsc_is_closed,
    spsc_ring_create,
    spsc_ring_destroy,
    spsc_ring_t,
    spsc_size,
    spsc_try_pop,
    spsc_try_push,
)


cdef extern from "<sched.h>" nogil:
    int sched_yield()

# Back-off while waiting: spin SPIN_LIMIT times (CPU pause, ~10 us), then
# sched_yield for YIELD_S, then nanosleep for 1/SLEEP_FRACTION of the time
# waited so far, clamped to [MIN_SLEEP_NS, MAX_SLEEP_NS]. Sleeping in
# proportion to the wait bounds the extra latency to ~1/8 of it, so two threads
# handing off through a small ring do not escalate each other to 1 ms sleeps
# (as plain doubling does); the short yield phase covers GIL hand-offs, which
# are often a bit longer than the spin but much shorter than one nanosleep
# (>= ~60 us with the default 50 us timer slack).
cdef enum:
    SPIN_LIMIT = 256
    SLEEP_FRACTION = 8
    MIN_SLEEP_NS = 1000
    MAX_SLEEP_NS = 1000000
# Blocking calls re-take the GIL this often to let Ctrl-C (signals) through.
cdef double SIGNAL_CHECK_S = 0.05
cdef double YIELD_S = 100e-6
MAX_CAPACITY = 1 << 40

cdef enum:  # wait results
    WAIT_OK
    WAIT_TIMEOUT
    WAIT_CLOSED
    WAIT_SLICE  # slice for signal checks elapsed; not finished yet


cdef struct backoff_t:
    unsigned int spins
    double start  # when the sleep phase began (monotonic seconds), < 0 before


class RingClosedError(RuntimeError):
    """Raised when pushing to an SpscRing that has been closed."""


cdef inline double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double> ts.tv_sec + <double> ts.tv_nsec * 1e-9


cdef inline void _backoff_init(backoff_t *b) noexcept nogil:
    b.spins = 0
    b.start = -1.0


cdef inline int _backoff(backoff_t *b, double deadline, double slice_end) noexcept nogil:
    """One wait step. Returns WAIT_TIMEOUT / WAIT_SLICE when due, else WAIT_OK."""
    cdef timespec ts
    cdef double now, until, ns
    if b.spins < SPIN_LIMIT:
        b.spins += 1
        recs_cpu_relax()
        return WAIT_OK
    now = _now()
    if deadline >= 0.0 and now >= deadline:
        return WAIT_TIMEOUT
    if now >= slice_end:
        return WAIT_SLICE
    if b.start < 0.0:
        b.start = now
    if now - b.start < YIELD_S:
        sched_yield()
        return WAIT_OK
    ns = (now - b.start) * (1e9 / SLEEP_FRACTION)
    ns = MIN_SLEEP_NS if ns < MIN_SLEEP_NS else (MAX_SLEEP_NS if ns > MAX_SLEEP_NS else ns)
    until = slice_end if (deadline < 0.0 or slice_end < deadline) else deadline
    if ns > (until - now) * 1e9:
        ns = (until - now) * 1e9 + 1.0
    ts.tv_sec = 0
    ts.tv_nsec = <long> ns
    nanosleep(&ts, NULL)
    return WAIT_OK


cdef int _wait_push(spsc_ring_t *r, uint64_t value, double deadline, double slice_end,
                    backoff_t *b) noexcept nogil:
    cdef int st
    while True:
        if spsc_is_closed(r):
            return WAIT_CLOSED
        if spsc_try_push(r, value):
            return WAIT_OK
        st = _backoff(b, deadline, slice_end)
        if st != WAIT_OK:
            return st


cdef int _wait_pop(spsc_ring_t *r, uint64_t *out, double deadline, double slice_end,
                   backoff_t *b) noexcept nogil:
    cdef int st
    while True:
        if spsc_try_pop(r, out):
            return WAIT_OK
        if spsc_is_closed(r):
            # close() is released after the last push: re-check once.
            return WAIT_OK if spsc_try_pop(r, out) else WAIT_CLOSED
        st = _backoff(b, deadline, slice_end)
        if st != WAIT_OK:
            return st


cdef int _as_u64(object value, uint64_t *out) except -1:
    """Convert an integer (int or anything with __index__) to uint64."""
    if not isinstance(value, int):
        value = operator.index(value)  # TypeError for float, str, ...
    try:
        out[0] = value
    except OverflowError:
        raise OverflowError(
            f"SpscRing values must be integers in 0..2**64-1, got {value!r}"
        ) from None
    return 0


cdef double _deadline(object timeout) except? -2.0:
    """Absolute deadline for a timeout in seconds; -1.0 means wait forever."""
    if timeout is None:
        return -1.0
    cdef double t = timeout
    if not t >= 0.0:  # also rejects NaN
        raise ValueError(f"timeout must be a non-negative number or None, got {timeout!r}")
    return _now() + t


cdef class SpscRing:
    """Bounded lock-free FIFO of uint64 values for exactly one producer thread
    and one consumer thread.

    ``capacity`` must be a power of two. Blocking ``push``/``pop`` release the
    GIL while waiting. ``close()`` (producer side) marks the end of the
    stream: ``pop`` then drains the remaining values and returns ``None``.
    """

    cdef spsc_ring_t *_r

    def __cinit__(self, capacity):
        cdef object cap = operator.index(capacity)
        if cap < 1 or cap > MAX_CAPACITY or (cap & (cap - 1)) != 0:
            raise ValueError(
                f"capacity must be a power of two between 1 and 2**40, got {capacity!r}"
            )
        self._r = spsc_ring_create(<uint64_t> cap)
        if self._r == NULL:
            raise MemoryError(f"cannot allocate SpscRing of capacity {cap}")

    def __dealloc__(self):
        spsc_ring_destroy(self._r)
        self._r = NULL

    @property
    def capacity(self) -> int:
        """Maximum number of values the ring holds."""
        return self._r.capacity

    @property
    def closed(self) -> bool:
        """True once ``close()`` has been called."""
        return spsc_is_closed(self._r)

    def __len__(self) -> int:
        """Approximate number of queued values (exact when no thread is active)."""
        return spsc_size(self._r)

    def __repr__(self) -> str:
        return (f"SpscRing(capacity={self._r.capacity}, len={spsc_size(self._r)}, "
                f"closed={spsc_is_closed(self._r)})")

    def close(self) -> None:
        """Mark the producer finished; wakes a consumer blocked in ``pop``."""
        spsc_close(self._r)

    def try_push(self, value) -> bool:
        """Push without waiting; False if the ring is full.

        Raises OverflowError for values outside 0..2**64-1, TypeError for
        non-integers and RingClosedError if the ring is closed.
        """
        cdef uint64_t v
        _as_u64(value, &v)
        if spsc_is_closed(self._r):
            raise RingClosedError("push to a closed SpscRing")
        return spsc_try_push(self._r, v)

    def try_pop(self):
        """Pop without waiting; the oldest value, or None if the ring is empty."""
        cdef uint64_t v
        if spsc_try_pop(self._r, &v):
            return v
        return None

    def push(self, value, timeout=None) -> bool:
        """Push, waiting (GIL released) up to ``timeout`` seconds for space.

        Returns False on timeout; ``timeout=None`` waits forever. Raises
        RingClosedError if the ring is (or becomes) closed.
        """
        cdef uint64_t v
        cdef backoff_t b
        cdef double deadline, slice_end
        cdef int st
        _as_u64(value, &v)
        if spsc_is_closed(self._r):
            raise RingClosedError("push to a closed SpscRing")
        if spsc_try_push(self._r, v):
            return True
        deadline = _deadline(timeout)
        _backoff_init(&b)
        while True:
            slice_end = _now() + SIGNAL_CHECK_S
            with nogil:
                st = _wait_push(self._r, v, deadline, slice_end, &b)
            if st == WAIT_OK:
                return True
            if st == WAIT_TIMEOUT:
                return False
            if st == WAIT_CLOSED:
                raise RingClosedError("SpscRing closed while waiting to push")
            PyErr_CheckSignals()

    def pop(self, timeout=None):
        """Pop, waiting (GIL released) up to ``timeout`` seconds for a value.

        Returns None on timeout, or immediately once the ring is closed and
        empty (check ``closed`` to tell the two apart). ``timeout=None``
        waits until a value arrives or the ring is closed.
        """
        cdef uint64_t v
        cdef backoff_t b
        cdef double deadline, slice_end
        cdef int st
        if spsc_try_pop(self._r, &v):
            return v
        deadline = _deadline(timeout)
        _backoff_init(&b)
        while True:
            slice_end = _now() + SIGNAL_CHECK_S
            with nogil:
                st = _wait_pop(self._r, &v, deadline, slice_end, &b)
            if st == WAIT_OK:
                return v
            if st == WAIT_TIMEOUT or st == WAIT_CLOSED:
                return None
            PyErr_CheckSignals()
