"""The official Python MCP SDK as an independent client of mxhook's MCP server.

usage: mcp_client.py stdio MXHOOK_BIN API_URL KEY INBOX OTHER_INBOX OTHER_MESSAGE
       mcp_client.py http  MCP_URL        KEY INBOX OTHER_INBOX OTHER_MESSAGE
Lists the tools, calls each on INBOX (reply included), waits for a new mail (printing {"waiting": true} first, so
the test sends it), then tries every tool on OTHER_INBOX / OTHER_MESSAGE. One JSON line per step.
"""

import asyncio
import json
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client


def emit(value):
    print(json.dumps(value), flush=True)


async def call(session, name, args):
    result = await session.call_tool(name, args)
    dumped = result.model_dump(mode="json", by_alias=True)
    emit({"call": name, "args": args, "is_error": bool(dumped.get("isError")),
          "content": dumped.get("content", [])})
    return dumped


def text_of(result):
    return "".join(item.get("text", "") for item in result["content"] if item.get("type") == "text")


async def scenario(session, inbox, other_inbox, other_message):
    await session.initialize()
    tools = await session.list_tools()
    emit({"tools": sorted(tool.name for tool in tools.tools),
          "schemas": {tool.name: tool.model_dump(mode="json", by_alias=True)["inputSchema"]
                      for tool in tools.tools}})
    await call(session, "list_inboxes", {})
    listed = await call(session, "list_messages", {"inbox_id": inbox, "limit": 10})
    message_id = json.loads(text_of(listed))["messages"][0]["id"]
    await call(session, "get_message", {"message_id": message_id})
    await call(session, "get_thread", {"message_id": message_id})
    await call(session, "get_attachment", {"message_id": message_id, "attachment_id": "att_0"})
    await call(session, "get_attachment", {"message_id": message_id, "attachment_id": "att_1"})
    await call(session, "reply", {"message_id": message_id, "text": "Thanks, got the **files**."})
    await call(session, "wait_for_message", {"inbox_id": inbox, "timeout_s": 1})
    emit({"waiting": True})
    await call(session, "wait_for_message", {"inbox_id": inbox, "timeout_s": 60})
    # Another inbox, through every tool that takes one.
    await call(session, "list_messages", {"inbox_id": other_inbox})
    await call(session, "get_message", {"message_id": other_message})
    await call(session, "get_thread", {"message_id": other_message})
    await call(session, "get_attachment", {"message_id": other_message, "attachment_id": "att_0"})
    await call(session, "reply", {"message_id": other_message, "text": "not yours"})
    await call(session, "wait_for_message", {"inbox_id": other_inbox, "timeout_s": 1})
    emit({"done": True})


async def main():
    mode = sys.argv[1]
    if mode == "stdio":
        binary, api_url, key, inbox, other_inbox, other_message = sys.argv[2:8]
        params = StdioServerParameters(
            command=binary, args=["mcp", "--api-url", api_url, "--api-key", key])
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                await scenario(session, inbox, other_inbox, other_message)
    else:
        url, key, inbox, other_inbox, other_message = sys.argv[2:7]
        async with create_mcp_http_client(headers={"Authorization": "Bearer " + key}) as http:
            async with streamable_http_client(url, http_client=http) as streams:
                async with ClientSession(streams[0], streams[1]) as session:
                    await scenario(session, inbox, other_inbox, other_message)


asyncio.run(main())
