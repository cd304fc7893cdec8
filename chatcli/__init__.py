"""chatcli: a terminal chat client for language models.

The library works without the command line::

    import asyncio
    from chatcli.providers import get_provider

    async def main() -> None:
        ollama = get_provider("ollama")
        messages = [{"role": "user", "content": "Hi"}]
        async for text in ollama.create_async_generator("llama3.2", messages):
            print(text, end="")

    asyncio.run(main())

Importing this package does no I/O and loads neither typer nor aiohttp.
"""

__version__ = "0.1.0"
