"""The websockets shell around the JSON-RPC session. Knows no chat.

Import what you need from the submodules (``gateway.server.app.Gateway``,
``gateway.server.closecodes.CloseCode``); this package imports nothing, so a
client can use the close codes without loading the server.
"""
