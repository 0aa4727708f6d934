"""The crowd of young accounts: a harvest spread over fresh accounts, each under the
young floor, told by what they read together.

A newcomer reads back what it just made; a throwaway account of a harvest reads what
others own. Per young account (in process, from its birth as this worker saw it, or its
first object read as a young account), the distinct objects it read on watched routes
(not a public catalogue, not a route with its own floor) and the writes the app answered
it with a success: once it read `own` more objects than it wrote, it is a *member*, and
every object a member reads joins the crowd's objects for `WINDOW`. Writes are POST,
PUT and PATCH requests naming no object answered 2xx (a sign-up and a login aside): a
creation answers 201 or 200 as the app chose. (A harvest that writes as much as it
reads is no member: a known limit.) While those are at the
bar (`base` distinct objects, or twice their usual number plus half `base`; the usual
number learned per whole window of the clock, quiet windows included, at most `CAP`
times `base`, see `apiguard.detectors.levels`), each member that reads is flagged. A
class of newcomers opening the same course documents is many members but few objects;
people writing notes and reading them back are no members at all.
"""

from __future__ import annotations

from collections import OrderedDict

from apiguard.detectors.levels import UsualLevel

WINDOW = 3600.0  # a crowd's object counts this long after a member read it
CAP = 4.0  # the usual number of objects is learned up to this many times `base`
_READERS_KEPT = 65_536  # young accounts followed (the latest)
_OBJECTS_KEPT = 16  # a young account's distinct objects remembered (then it counts no more)
_CROWD_KEPT = 16_384  # the crowd's objects remembered (the latest)


class _Reader:
    __slots__ = ("member", "objects", "until", "writes")

    def __init__(self, until: float) -> None:
        self.objects: set[int] = set()
        self.writes = 0
        self.until = until  # (young until then)
        self.member = False


class YoungCrowd:
    """The crowd of young accounts reading others' objects (see the module docstring)."""

    def __init__(self, base: int, own: int, young_for: float) -> None:
        self.base = base  # (0: off)
        self.own = own
        self.young_for = young_for
        self._readers: OrderedDict[str, _Reader] = OrderedDict()
        self._objects: OrderedDict[int, float] = OrderedDict()  # object -> last read
        self._bucket = -1
        self._in_bucket: set[int] = set()  # (the clock window's objects, for the level)
        self.level = UsualLevel(
            float(base), 2.0, base * 0.5, cap=base * CAP, gaps=True, share=0.5
        )
        self.fired = False  # (whether it ever flagged a member)

    def _reader(self, subject: str, now: float) -> _Reader:
        readers = self._readers
        reader = readers.get(subject)
        if reader is not None and now <= reader.until:
            readers.move_to_end(subject)
            return reader
        if reader is not None:
            del readers[subject]
        elif len(readers) >= _READERS_KEPT:
            readers.popitem(last=False)
        reader = readers[subject] = _Reader(now + self.young_for)
        return reader

    def born(self, subject: str, now: float) -> None:
        """`subject` was born in a sign-up seen here (its writes count from now)."""
        if self.base:
            self._reader(subject, now)

    def wrote(self, subject: str) -> None:
        """The app answered a write of `subject` that names no object with a success (if
        it is followed): it made something of its own."""
        reader = self._readers.get(subject)
        if reader is not None:
            reader.writes += 1

    def read(self, subject: str, item: str, now: float) -> tuple[int, float] | None:
        """Young account `subject` read object `item`: (the crowd's objects, the bar)
        when it is a member and the crowd is at the bar (flag it), else None."""
        if not self.base:
            return None
        reader = self._reader(subject, now)
        objects = reader.objects
        obj = hash(item)
        if len(objects) < _OBJECTS_KEPT:
            objects.add(obj)
        if len(objects) - reader.writes < self.own:
            return None
        crowd = self._objects
        bucket = int(now // WINDOW)
        if bucket != self._bucket:
            self._bucket = bucket
            self._in_bucket = set()
        joining = not reader.member
        reader.member = True
        for one in objects if joining else (obj,):  # (a new member brings what it read)
            crowd.pop(one, None)
            crowd[one] = now
            if len(self._in_bucket) < _CROWD_KEPT:
                self._in_bucket.add(one)
        while crowd:  # (the oldest first: drop what left the window, or is ahead of it)
            first, at = next(iter(crowd.items()))
            if len(crowd) <= _CROWD_KEPT and 0 <= now - at <= WINDOW:
                break
            del crowd[first]
        level = self.level
        level.learn(len(self._in_bucket), bucket)
        bar = level.bar()
        if len(crowd) < bar:
            return None
        self.fired = True
        level.spoil()  # (a harvest's hour teaches nothing of the usual crowd)
        return len(crowd), bar
