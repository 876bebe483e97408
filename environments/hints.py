"""Actionable hints: a rule layer over the official API classes' result strings (the classes are not forked).

Each rule looks at one executed call (tool name, the agent's own arguments, the official result string)
and may return a hint naming the tool dependency or constraint behind the failure. Hints never contain
ground-truth values: they only quote the agent's own arguments, tool names currently offered, and text
from the offered tool docs (all already in the conversation), and they never say how much or how far
(fully, all the way, maximum...) unless the official result they are attached to says it. Families
(from the paper):
- file system: paths where a plain name is expected, nested `cd`, not found, is-a-directory, forbidden
  characters, non-empty rmdir;
- travel: unknown airport codes (point to the airport tools), unsupported currency pairs;
- vehicle: distance by city name (point to the zipcode tool), the unavailable weather service,
  engine start preconditions;
- authentication failures in any class (point to that class's login tool);
- a call to a tool that is not offered (hallucinated, or withheld in miss_func).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping

from envtune_jax.environments.executor import ExecutedCall

FORBIDDEN_NAME_CHARACTERS = '|/\\?%*:"><'
FS_NAME_ARGUMENTS = ("file_name", "dir_name", "source", "destination", "file_name1", "file_name2")
HINT_PREFIX = "Hint: "


@dataclasses.dataclass(frozen=True)
class HintContext:
    """What rules may mention: tools offered now (name -> owning class) and their docs."""

    owner_of_offered: Mapping[str, str]
    docs: Mapping[str, Mapping[str, Any]]

    def offered(self, name: str) -> bool:
        return name in self.owner_of_offered

    def login_tools(self, class_name: str) -> list[str]:
        """The offered tools of the class that log in (`*login`, `authenticate*`; not `*_get_login_status`)."""
        return sorted(
            n
            for n, c in self.owner_of_offered.items()
            if c == class_name and (n.endswith("login") or n.startswith("authenticate"))
        )


Rule = Callable[[ExecutedCall, HintContext], "str | None"]


def _file_system_rule(call: ExecutedCall, ctx: HintContext) -> str | None:
    if ctx.owner_of_offered.get(call.name) != "GorillaFileSystem":
        return None
    result = call.result
    path_args = [a for a in FS_NAME_ARGUMENTS if isinstance(call.arguments.get(a), str) and "/" in call.arguments[a]]
    if call.name == "cd" and "Unsupported path" in result:
        return "cd moves one folder level per call: call cd once for each folder on the way, then continue from there."
    if path_args and (
        "Invalid character" in result
        or "No such file" in result
        or "path not allowed" in result
        or "Not a directory" in result
    ):
        bad = ", ".join(repr(call.arguments[a]) for a in path_args)
        return (
            f"paths are not accepted here ({bad}): give the plain name of an item in the current "
            "directory. To work in another folder, cd into it one level at a time and call again."
        )
    if "Invalid character" in result:
        return f"names cannot contain any of the characters {FORBIDDEN_NAME_CHARACTERS}; use a plain name."
    if "Is a directory" in result:
        name = call.arguments.get("file_name")
        return f"{name!r} is a folder, not a file: cd into it and use ls to list the files it holds."
    if "No such file" in result or "No such directory" in result:
        finders = [t for t in ("ls", "pwd", "find") if ctx.offered(t)]
        how = f" Use {', '.join(finders)} to see where you are and where it lives," if finders else ""
        return (
            f"that name is not in the current directory (only the current directory is searched).{how} "
            "then cd into the folder that holds it."
        )
    if "Directory not empty" in result:
        return "rmdir only removes empty folders: move or remove what is inside first."
    return None


def _travel_rule(call: ExecutedCall, ctx: HintContext) -> str | None:
    result = call.result
    if "airport code" in result or "No available route for the given airports" in result:
        tools = [t for t in ("list_all_airports", "get_nearest_airport_by_city") if ctx.offered(t)]
        where = f" Look the codes up with {' or '.join(tools)}." if tools else ""
        return f"airport arguments must be 3-letter codes of airports the system knows.{where}"
    if "No available exchange rate" in result:
        doc = ctx.docs.get(call.name, {})
        enum = re.search(r"\[Enum\]: ([A-Z, ]+)", str(doc.get("parameters", {})))
        listed = f" Supported currencies: {enum.group(1).strip()}." if enum else ""
        return (
            "rates exist only between USD and one other currency; for any other pair convert to USD "
            f"first, then from USD.{listed}"
        )
    return None


def _vehicle_rule(call: ExecutedCall, ctx: HintContext) -> str | None:
    result = call.result
    if call.name == "estimate_distance" and "distance not found" in result:
        helper = (
            " Get each city's zipcode with get_zipcode_based_on_city first."
            if ctx.offered("get_zipcode_based_on_city")
            else ""
        )
        return f"estimate_distance takes zipcodes (cityA, cityB), not city names.{helper}"
    if call.name == "get_outside_temperature_from_weather_com" and "404" in result:
        if ctx.offered("get_outside_temperature_from_google"):
            return "this weather service is unavailable; get_outside_temperature_from_google gives the same reading."
        return "this weather service is unavailable."
    if call.name == "startEngine":
        if "doors must be locked" in result:
            return "lock every door (lockDoors) before starting the engine."
        # How far to press is the answer (the ground truth presses fully): say only what the official
        # message says, which names "fully" once the pedal is pressed but not fully.
        if "Brake pedal needs to be pressed" in result:
            return "the brake pedal must be pressed (pressBrakePedal) before starting the engine."
        if "press the brake fully" in result:
            return "the brake pedal is pressed, but not fully: press it fully (pressBrakePedal), then startEngine."
    return None


def _authentication_rule(call: ExecutedCall, ctx: HintContext) -> str | None:
    lowered = call.result.lower()
    if not any(
        s in lowered
        for s in (
            "not authenticated",
            "no user is currently logged in",
            "token expired",
            "invalid access token",
            "token not initialized",
        )
    ):
        return None
    logins = ctx.login_tools(ctx.owner_of_offered.get(call.name, ""))
    if not logins:
        return None
    token = " and pass the access token it returns" if "token" in lowered else ""
    return f"this action needs a logged-in session: call {' or '.join(logins)} first{token}."


RULES: tuple[Rule, ...] = (_file_system_rule, _travel_rule, _vehicle_rule, _authentication_rule)


def hint_for(call: ExecutedCall, ctx: HintContext) -> str | None:
    """The first matching rule's hint (prefixed with "Hint: "), or None when no rule applies."""
    if call.name not in ctx.owner_of_offered:
        if not call.result.endswith("is not defined"):
            return None  # a withheld tool the config lets run: it worked, nothing to hint
        return (
            f"{HINT_PREFIX}{call.name!r} is not one of the available tools: call only tools from the list "
            "you were given, or tell the user what is missing."
        )
    for rule in RULES:
        hint = rule(call, ctx)
        if hint:
            return HINT_PREFIX + hint
    return None
