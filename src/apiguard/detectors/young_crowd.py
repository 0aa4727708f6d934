"""The crowd of young accounts: a harvest spread over fresh accounts, each under the
young floor, told by what they read together.

A newcomer reads back what it just made; a throwaway account of a harvest reads what
others own. Per young account (in process, from its birth as this worker saw it, or its
first object read as a young account), the distinct objects it read on watched routes
(not a public catalogue, not a route with its own floor) and the writes the app answered
it with a success: once it read `own` more objects than it wrote, it is a *member*, and
every object a member reads joins the crowd's objects for `WINDOW`. Writes are POST,
PUT and PATCH requests naming no object answered 2xx (a sign-up and a login aside): a
creation answers 201 or 200 as the app chose.

A write is credited only against objects the account could have made. On a route whose
integer ids come in order of creation (a database's sequence), an object whose id is no
higher than the route's highest id read (2xx GET) when the account was first followed
existed before it, and counts whatever the account wrote (a harvest that writes junk
before reading old objects). A route is taken to give ids in order once, of the latest
`ORDER_SEEN` young accounts that wrote, then read an object there, `ORDER_VOTES` read
one above that mark first (a newcomer reading back what it made), counted only after the
route's highest id rose `ORDER_AFTER` times (ids at random: by then a new one is above
the highest read once in hundreds); from then on for the process's life (a harvest
reading old objects later cannot undo it). Until then, and for ids that are no
integers, any object may be the account's own; an id within `ORDER_SLACK` of the mark
too (a sequence that hands out ids a little out of order). While those are at the
bar (`base` distinct objects, or twice their usual number plus half `base`; the usual
number learned per whole window of the clock, quiet windows included, at most `CAP`
times `base`, see `apiguard.detectors.levels`), each member that reads is flagged. A
class of newcomers opening the same course documents is many members but few objects;
people writing notes and reading them back are no members at all.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import OrderedDict, deque

from apiguard.detectors.levels import UsualLevel

WINDOW = 3600.0  # a crowd's object counts this long after a member read it
CAP = 4.0  # the usual number of objects is learned up to this many times `base`
_READERS_KEPT = 65_536  # young accounts followed (the latest)
_OBJECTS_KEPT = 16  # a young account's distinct objects remembered (then it counts no more)
_CROWD_KEPT = 16_384  # the crowd's objects remembered (the latest)
_MARK_EVERY = 60.0  # a route's highest id is noted at most this often
_MARKS_KEPT = 2_048  # and the latest this many notes are kept (per route)
_ROUTES_KEPT = 256  # routes whose highest ids are noted (the latest)
ORDER_SEEN = 256  # a route's ids are in order once, of the latest this many young writers'
ORDER_VOTES = 8  # first reads there, this many were above the mark,
ORDER_AFTER = 8  # counted once the route's highest id rose this many times
ORDER_SLACK = 32  # an id this close under the mark may still be new


class _Reader:
    __slots__ = ("member", "objects", "old", "since", "until", "voted", "writes")

    def __init__(self, since: float, until: float) -> None:
        self.objects: set[int] = set()
        self.old = 0  # (of those, objects that existed before it was followed)
        self.writes = 0
        self.since = since  # (followed since then)
        self.until = until  # (young until then)
        self.member = False
        self.voted = False  # (whether its first read after a write was a vote)


class _Highest:
    """A route's highest integer id read over time: notes of (when, the highest then),
    at most one per `_MARK_EVERY` (so a note may be lower than the highest at its time,
    never higher)."""

    __slots__ = ("above", "ordered", "rises", "times", "values", "votes")

    def __init__(self) -> None:
        self.times: deque[float] = deque(maxlen=_MARKS_KEPT)
        self.values: deque[int] = deque(maxlen=_MARKS_KEPT)
        self.rises = 0  # (how many times the highest rose)
        self.votes: deque[bool] = deque()
        self.above = 0  # (votes above the mark among `votes`)
        self.ordered = False  # (its ids come in order of creation: for good)

    def vote(self, above: bool) -> None:
        """A young account that wrote read its first object here: above the mark?"""
        if self.ordered or self.rises < ORDER_AFTER:
            return
        votes = self.votes
        votes.append(above)
        self.above += above
        if len(votes) > ORDER_SEEN:
            self.above -= votes.popleft()
        if self.above >= ORDER_VOTES:
            self.ordered = True
            self.votes = deque()

    def note(self, value: int, now: float) -> None:
        self.rises += 1
        times = self.times
        if not times or now - times[-1] >= _MARK_EVERY or now < times[-1]:
            times.append(now)
            self.values.append(value)

    def at(self, when: float) -> int | None:
        """The highest id noted at or before `when` (None: none noted then)."""
        times = self.times
        place = bisect_right(times, when)
        return self.values[place - 1] if place else None


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
        self._highest: OrderedDict[str, _Highest] = OrderedDict()  # route -> its ids
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
        reader = readers[subject] = _Reader(now, now + self.young_for)
        return reader

    def highest(self, route: str, value: int, now: float) -> None:
        """A GET of `route` answered 2xx for integer id `value`, higher than any before
        there (the caller keeps the highest: only a new one is passed)."""
        if not self.base:
            return
        found = self._highest.get(route)
        if found is None:
            if len(self._highest) >= _ROUTES_KEPT:
                self._highest.popitem(last=False)
            found = self._highest[route] = _Highest()
        found.note(value, now)

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

    def read(
        self, subject: str, item: str, now: float, route: str, value: int | None
    ) -> tuple[int, float] | None:
        """Young account `subject` read object `item` (on `route`, its integer id
        `value`): (the crowd's objects, the bar) when it is a member and the crowd is at
        the bar (flag it), else None."""
        if not self.base:
            return None
        reader = self._reader(subject, now)
        objects = reader.objects
        obj = hash(item)
        if len(objects) < _OBJECTS_KEPT and obj not in objects:
            objects.add(obj)
            if value is not None:
                highest = self._highest.get(route)
                if highest is not None:
                    mark = highest.at(reader.since)
                    if mark is not None:
                        if reader.writes and not reader.voted:
                            reader.voted = True
                            highest.vote(value > mark)
                        if value + ORDER_SLACK <= mark and highest.ordered:
                            reader.old += 1  # (it existed before: none of its writes made it)
        old = reader.old
        if old + max(0, len(objects) - old - reader.writes) < self.own:
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
