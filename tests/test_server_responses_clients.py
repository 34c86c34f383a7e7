"""The Responses API through the libraries that default to it: openai-agents
(``OpenAIResponsesModel``) and langchain-openai (``use_responses_api=True``), on the tiny GGUF.
Neither is a dev dependency: each test runs where its library is installed."""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Any, Literal

import pytest
from pydantic import BaseModel

pytest.importorskip("llama_cpp")


def needs(module: str) -> pytest.MarkDecorator:
    missing = importlib.util.find_spec(module) is None
    return pytest.mark.skipif(missing, reason=f"{module} is not installed")


class Weather(BaseModel):
    city: Literal["Paris", "Rome"]  # an enum: the random tiny model ends it (a grammar does)
    sunny: bool


@needs("agents")
def test_openai_agents_runs_a_forced_tool_whole_and_streamed(tiny_server: str) -> None:
    import agents
    from openai import AsyncOpenAI

    agents.set_tracing_disabled(True)
    cities: list[str] = []

    @agents.function_tool
    def get_weather(city: Literal["Paris", "Rome"]) -> str:
        """The weather in a city."""
        cities.append(city)
        return f"Sunny in {city}"

    client = AsyncOpenAI(base_url=tiny_server + "/v1", api_key="sk-x", max_retries=0)
    agent = agents.Agent(
        name="weather",
        instructions="Answer with the tool.",
        tools=[get_weather],
        model=agents.OpenAIResponsesModel(model="tiny", openai_client=client),
        model_settings=agents.ModelSettings(tool_choice="required", max_tokens=200, temperature=0),
        tool_use_behavior="stop_on_first_tool",  # the random model cannot end a turn itself
    )

    async def both() -> tuple[Any, Any, set[str]]:
        whole = await agents.Runner.run(agent, "Weather in Paris?", max_turns=3)
        streamed = agents.Runner.run_streamed(agent, "Weather in Paris?", max_turns=3)
        kinds = {event.type async for event in streamed.stream_events()}
        return whole, streamed, kinds

    whole, streamed, kinds = asyncio.run(both())
    assert len(cities) == 2 and set(cities) <= {"Paris", "Rome"}
    assert whole.final_output == f"Sunny in {cities[0]}"
    assert streamed.final_output == f"Sunny in {cities[1]}"
    assert "raw_response_event" in kinds and "run_item_stream_event" in kinds


@needs("langchain_openai")
def test_langchain_chat_openai_on_the_responses_api(tiny_server: str) -> None:
    import langchain_openai as lc

    def llm(max_tokens: int) -> Any:
        return lc.ChatOpenAI(
            model="tiny",
            base_url=tiny_server + "/v1",
            api_key="sk-x",
            use_responses_api=True,
            temperature=0,
            max_tokens=max_tokens,
            max_retries=0,
        )

    message = llm(24).invoke("hello")
    assert message.text and message.usage_metadata["output_tokens"] <= 24
    assert "".join(chunk.text for chunk in llm(24).stream("hello"))
    named = llm(200).bind_tools([Weather], tool_choice="Weather").invoke("Weather in Paris?")
    assert named.tool_calls and named.tool_calls[0]["name"] == "Weather"
    assert Weather(**named.tool_calls[0]["args"])
    for method in ("json_schema", "function_calling"):
        structured = llm(200).with_structured_output(Weather, method=method)
        assert isinstance(structured.invoke("Weather in Paris?"), Weather)
