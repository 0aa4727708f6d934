"""The crowd of young accounts: a harvest spread over fresh accounts, each under the
young floor, told by what they read together.

A newcomer reads back what it just made; a throwaway account of a harvest reads what
others own. Per young account (in process, from its birth as this worker saw it, or its
first object read as a young account), the distinct objects it read on watched routes
(not a public catalogue, not a route with its own floor) and the writes the app answered
it with a success: once it read `own` more objects than it wrote, it is a *member*, and
every object a member reads joins the crowd's objects for `WINDOW`. Writes are
responses 201 Created (a sign-up and a login aside). While those are at the
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


def object_key(template: str | None, params: object) -> int:
    """What names a request's object at the checkpoint and after it alike: its route
    template and path parameters."""
    if isinstance(params, dict) and params:
        return hash((template, *sorted((str(k), str(v)) for k, v in params.items())))
    return hash((template,))


class _Reader:
    __slots__ = ("member", "objects", "seen", "until", "writes")

    def __init__(self, until: float) -> None:
        self.objects: set[int] = set()
        self.seen: set[int] = set()  # (`object_key`s of what it read)
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
        """The app answered `subject` 201 Created (if it is followed): it made an object
        of its own (a search or a setting answered 200 is no creation)."""
        reader = self._readers.get(subject)
        if reader is not None:
            reader.writes += 1

    def reads_its_own(self, subject: str, key: int) -> bool:
        """Whether `subject` made objects and reads again one it read (`key`, its
        `object_key`), or reads fewer distinct objects than it made (a newcomer reading
        back what it created): the young-account alarm does not hold that request. A
        harvest gets one foreign object per object it creates."""
        reader = self._readers.get(subject)
        if reader is None or not reader.writes:
            return False
        return key in reader.seen or len(reader.objects) < reader.writes

    def read(self, subject: str, item: str, key: int, now: float) -> tuple[int, float] | None:
        """Young account `subject` read object `item` (`key`: its `object_key`): (the
        crowd's objects, the bar) when it is a member and the crowd is at the bar (flag
        it), else None."""
        if not self.base:
            return None
        reader = self._reader(subject, now)
        objects = reader.objects
        obj = hash(item)
        if len(objects) < _OBJECTS_KEPT:
            objects.add(obj)
            reader.seen.add(key)
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
