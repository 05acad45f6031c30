"""An example llmos plugin: one tool, one task and one command, through the public hooks only."""

from __future__ import annotations

from typing import Literal

from llmos import hookimpl

# A real plugin would call a weather API (and so need the "net" capability); this one is offline.
_CLIMATE = {"oslo": 6, "paris": 13, "cairo": 23, "lima": 19}


def weather(city: str, unit: Literal["c", "f"] = "c") -> dict:
    """Current temperature in a city."""
    celsius = _CLIMATE.get(city.lower())
    if celsius is None:
        raise ValueError(f"no data for {city!r}; known cities: {', '.join(sorted(_CLIMATE))}")
    return {"city": city, "temperature": celsius if unit == "c" else round(celsius * 9 / 5 + 32), "unit": unit}


def forecast(kernel, city: str, days: int = 3) -> dict:
    """A short forecast written by the model, from the weather tool's reading."""
    reading = kernel.call_tool("weather", {"city": city}, owner="task:forecast")
    if not reading.ok:
        return {"error": reading.error}
    prompt = f"It is {reading.value['temperature']}°C in {city}. Write a {days}-day forecast in one sentence."
    return {"city": city, "forecast": kernel.chat([{"role": "user", "content": prompt}], max_tokens=60).text}


@hookimpl
def register_tools(register):
    register(weather, capabilities=["net"])


@hookimpl
def register_tasks(register):
    register("forecast", forecast)


@hookimpl
def register_commands(register):
    register("weather", lambda kernel, args: weather(" ".join(args) or "Oslo"), help="Show a city's weather.")
