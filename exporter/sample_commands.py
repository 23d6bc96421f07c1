"""AVAP's own command set, hand-written for the sample catalog (data only; see ``sample.py``).

Each entry: name, component type, interface items as (item, type) pairs in
the legacy list format, a description, and the Python body the AVAP
interpreter runs. Bodies use the interpreter's context: ``self.resolve(x)``
turns a literal or ``$variable`` reference into a value, ``self.variables``
holds the script's variables, ``self.flow`` the control-flow stack.
"""

from __future__ import annotations

from typing import NamedTuple


class CoreCommand(NamedTuple):
    """One hand-written command definition."""

    name: str
    component: str
    items: tuple[tuple[str, str], ...]
    description: str
    code: str
    logic: bool = False


V, X = "variable", "value"

CORE_COMMANDS: tuple[CoreCommand, ...] = (
    CoreCommand(
        "addVar",
        "variables",
        (("targetVarName", V), ("varValue", X)),
        "Assigns a value (a literal, an expression or another variable) to a variable.",
        "def addVar(self, targetVarName, varValue):\n"
        "    value = self.resolve(varValue)\n"
        "    self.variables[targetVarName] = value\n"
        "    return value\n",
    ),
    CoreCommand(
        "addParam",
        "variables",
        (("param", X), ("variable", V)),
        "Copies a parameter of the incoming request into a variable (None when absent).",
        "def addParam(self, param, variable):\n"
        "    name = self.resolve(param)\n"
        "    value = self.request.args.get(name)\n"
        "    if value is None and self.request.is_json:\n"
        "        value = (self.request.get_json(silent=True) or {}).get(name)\n"
        "    self.variables[variable] = value\n"
        "    return value\n",
    ),
    CoreCommand(
        "addResult",
        "variables",
        (("sourceVariable", V),),
        "Adds a variable, under its own name, to the JSON response of the API.",
        "def addResult(self, sourceVariable):\n"
        "    if sourceVariable not in self.variables:\n"
        "        raise AvapError(f'addResult: variable {sourceVariable} is not defined')\n"
        "    self.results[sourceVariable] = self.variables[sourceVariable]\n",
    ),
    CoreCommand(
        "setStatus",
        "variables",
        (("statusCode", X),),
        "Sets the HTTP status code of the response.",
        "def setStatus(self, statusCode):\n"
        "    code = int(self.resolve(statusCode))\n"
        "    if not 100 <= code <= 599:\n"
        "        raise AvapError(f'setStatus: {code} is not an HTTP status')\n"
        "    self.status_code = code\n",
    ),
    CoreCommand(
        "if",
        "control",
        (("variable", V), ("variableValue", X), ("comparator", X)),
        "Runs the following block when the comparison holds; closed by end().",
        "OPERATORS = {'=': operator.eq, '!=': operator.ne, '<': operator.lt, '>': operator.gt,\n"
        "             '<=': operator.le, '>=': operator.ge}\n\n\n"
        "def if_(self, variable, variableValue, comparator):\n"
        "    compare = OPERATORS.get(self.resolve(comparator))\n"
        "    if compare is None:\n"
        "        raise AvapError(f'if: unknown comparator {comparator!r}')\n"
        "    taken = bool(compare(self.variables.get(variable), self.resolve(variableValue)))\n"
        "    self.flow.push('if', taken=taken)\n"
        "    self.skipping = self.skipping or not taken\n",
        logic=True,
    ),
    CoreCommand(
        "else",
        "control",
        (),
        "Starts the block that runs when the preceding if() did not.",
        "def else_(self):\n"
        "    frame = self.flow.top('if')\n"
        "    if frame.seen_else:\n"
        "        raise AvapError('else: a second else in the same if')\n"
        "    frame.seen_else = True\n"
        "    self.skipping = self.flow.outer_skipping() or frame.taken\n",
        logic=True,
    ),
    CoreCommand(
        "end",
        "control",
        (),
        "Closes the block opened by the nearest if().",
        "def end(self):\n    self.flow.pop('if')\n    self.skipping = self.flow.outer_skipping()\n",
        logic=True,
    ),
    CoreCommand(
        "startLoop",
        "control",
        (("varName", V), ("from", X), ("to", X)),
        "Repeats the block up to endLoop() with varName counting from 'from' to 'to' inclusive.",
        "def startLoop(self, varName, from_, to):\n"
        "    start, stop = int(self.resolve(from_)), int(self.resolve(to))\n"
        "    self.flow.push('loop', var=varName, current=start, stop=stop, pc=self.pc)\n"
        "    self.variables[varName] = start\n"
        "    self.skipping = self.skipping or start > stop\n",
        logic=True,
    ),
    CoreCommand(
        "endLoop",
        "control",
        (),
        "Ends one pass of the enclosing startLoop(); jumps back while the counter has not passed 'to'.",
        "def endLoop(self):\n"
        "    frame = self.flow.top('loop')\n"
        "    frame.current += 1\n"
        "    if frame.current <= frame.stop and not self.flow.outer_skipping():\n"
        "        self.variables[frame.var] = frame.current\n"
        "        self.pc = frame.pc\n"
        "        return\n"
        "    self.flow.pop('loop')\n"
        "    self.skipping = self.flow.outer_skipping()\n",
        logic=True,
    ),
    CoreCommand(
        "try",
        "control",
        (),
        "Starts a block whose errors are caught by the following exception().",
        "def try_(self):\n    self.flow.push('try', pc=self.pc, variables=dict(self.variables))\n",
        logic=True,
    ),
    CoreCommand(
        "exception",
        "control",
        (("targetVarName", V),),
        "Ends a try() block; when it failed, stores the error message in targetVarName and continues.",
        "def exception(self, targetVarName):\n"
        "    frame = self.flow.pop('try')\n"
        "    self.variables[targetVarName] = str(frame.error) if frame.error else None\n"
        "    self.skipping = self.flow.outer_skipping()\n",
        logic=True,
    ),
    CoreCommand(
        "function",
        "control",
        (("functionName", X), ("parameters", X)),
        "Declares a reusable function up to the matching return().",
        "def function(self, functionName, parameters):\n"
        "    names = [p.strip() for p in self.resolve(parameters).split(',') if p.strip()]\n"
        "    self.functions[self.resolve(functionName)] = Function(names, start=self.pc + 1)\n"
        "    self.skip_to_matching('return')\n",
        logic=True,
    ),
    CoreCommand(
        "return",
        "control",
        (("sourceVariable", V),),
        "Returns from the current function with the value of sourceVariable.",
        "def return_(self, sourceVariable):\n"
        "    value = self.variables.get(sourceVariable)\n"
        "    frame = self.calls.pop()\n"
        "    self.variables, self.pc = frame.variables, frame.return_pc\n"
        "    self.variables[frame.target] = value\n",
        logic=True,
    ),
    CoreCommand(
        "RequestGet",
        "http",
        (("url", X), ("querystring", X), ("headers", X), ("targetVarName", V)),
        "Sends an HTTP GET and stores the decoded JSON (or the text) of the answer.",
        "def RequestGet(self, url, querystring, headers, targetVarName):\n"
        "    response = self.http.get(\n"
        "        self.resolve(url),\n"
        "        params=self.resolve(querystring) or None,\n"
        "        headers=self.resolve(headers) or None,\n"
        "        timeout=self.settings.http_timeout_s,\n"
        "    )\n"
        "    self.variables[targetVarName] = decode_body(response)\n"
        "    self.variables['_http_status'] = response.status_code\n",
    ),
    CoreCommand(
        "RequestPost",
        "http",
        (("url", X), ("querystring", X), ("headers", X), ("body", X), ("targetVarName", V)),
        "Sends an HTTP POST with a JSON body and stores the decoded answer.",
        "def RequestPost(self, url, querystring, headers, body, targetVarName):\n"
        "    response = self.http.post(\n"
        "        self.resolve(url),\n"
        "        params=self.resolve(querystring) or None,\n"
        "        headers=self.resolve(headers) or None,\n"
        "        json=self.resolve(body),\n"
        "        timeout=self.settings.http_timeout_s,\n"
        "    )\n"
        "    self.variables[targetVarName] = decode_body(response)\n"
        "    self.variables['_http_status'] = response.status_code\n",
    ),
    CoreCommand(
        "RequestPut",
        "http",
        (("url", X), ("querystring", X), ("headers", X), ("body", X), ("targetVarName", V)),
        "Sends an HTTP PUT with a JSON body and stores the decoded answer.",
        "def RequestPut(self, url, querystring, headers, body, targetVarName):\n"
        "    response = self.http.put(\n"
        "        self.resolve(url), params=self.resolve(querystring) or None,\n"
        "        headers=self.resolve(headers) or None, json=self.resolve(body),\n"
        "        timeout=self.settings.http_timeout_s,\n"
        "    )\n"
        "    self.variables[targetVarName] = decode_body(response)\n",
    ),
    CoreCommand(
        "RequestDelete",
        "http",
        (("url", X), ("querystring", X), ("headers", X), ("targetVarName", V)),
        "Sends an HTTP DELETE and stores the decoded answer.",
        "def RequestDelete(self, url, querystring, headers, targetVarName):\n"
        "    response = self.http.delete(\n"
        "        self.resolve(url), params=self.resolve(querystring) or None,\n"
        "        headers=self.resolve(headers) or None, timeout=self.settings.http_timeout_s,\n"
        "    )\n"
        "    self.variables[targetVarName] = decode_body(response)\n",
    ),
    CoreCommand(
        "ormAccessSelect",
        "orm",
        (("fields", X), ("tableName", X), ("selector", X), ("targetVarName", V)),
        "Reads rows of a table of the project's database into a list of objects.",
        "def ormAccessSelect(self, fields, tableName, selector, targetVarName):\n"
        "    columns = [f.strip() for f in self.resolve(fields).split(',')] if fields != '*' else None\n"
        "    table = self.orm.table(self.resolve(tableName))\n"
        "    query = table.select(columns)\n"
        "    if selector:\n"
        "        query = query.where(self.orm.parse_selector(self.resolve(selector), table))\n"
        "    self.variables[targetVarName] = [dict(row) for row in self.orm.execute(query)]\n",
    ),
    CoreCommand(
        "ormAccessInsert",
        "orm",
        (("fields", X), ("fieldsValues", X), ("tableName", X), ("targetVarName", V)),
        "Inserts one row and stores its new id.",
        "def ormAccessInsert(self, fields, fieldsValues, tableName, targetVarName):\n"
        "    names = [f.strip() for f in self.resolve(fields).split(',')]\n"
        "    values = self.resolve(fieldsValues)\n"
        "    if len(names) != len(values):\n"
        "        raise AvapError('ormAccessInsert: fields and values differ in number')\n"
        "    table = self.orm.table(self.resolve(tableName))\n"
        "    self.variables[targetVarName] = self.orm.insert(table, dict(zip(names, values)))\n",
    ),
    CoreCommand(
        "ormAccessUpdate",
        "orm",
        (("fields", X), ("fieldsValues", X), ("tableName", X), ("selector", X), ("targetVarName", V)),
        "Updates the rows the selector matches and stores how many changed.",
        "def ormAccessUpdate(self, fields, fieldsValues, tableName, selector, targetVarName):\n"
        "    names = [f.strip() for f in self.resolve(fields).split(',')]\n"
        "    table = self.orm.table(self.resolve(tableName))\n"
        "    where = self.orm.parse_selector(self.resolve(selector), table)\n"
        "    changes = dict(zip(names, self.resolve(fieldsValues)))\n"
        "    self.variables[targetVarName] = self.orm.update(table, changes, where)\n",
    ),
    CoreCommand(
        "ormDirect",
        "orm",
        (("sentence", X), ("targetVarName", V)),
        "Runs one SQL statement on the project's database and stores the rows it returns.",
        "def ormDirect(self, sentence, targetVarName):\n"
        "    statement = self.resolve(sentence)\n"
        "    rows = self.orm.execute_text(statement, self.variables)\n"
        "    self.variables[targetVarName] = [dict(row) for row in rows] if rows is not None else None\n",
    ),
    CoreCommand(
        "ormCheckTable",
        "orm",
        (("tableName", X), ("targetVarName", V)),
        "Stores True when the table exists in the project's database.",
        "def ormCheckTable(self, tableName, targetVarName):\n"
        "    self.variables[targetVarName] = self.orm.has_table(self.resolve(tableName))\n",
    ),
    CoreCommand(
        "ormCreateTable",
        "orm",
        (("fields", X), ("fieldsType", X), ("tableName", X), ("targetVarName", V)),
        "Creates a table with the given columns and types.",
        "def ormCreateTable(self, fields, fieldsType, tableName, targetVarName):\n"
        "    names = [f.strip() for f in self.resolve(fields).split(',')]\n"
        "    types = [t.strip() for t in self.resolve(fieldsType).split(',')]\n"
        "    self.orm.create_table(self.resolve(tableName), list(zip(names, types)))\n"
        "    self.variables[targetVarName] = True\n",
    ),
    CoreCommand(
        "getDateTime",
        "datetime",
        (("format", X), ("timeDelta", X), ("timeZone", X), ("targetVarName", V)),
        "Stores the current date and time, shifted by timeDelta seconds, formatted with strftime.",
        "def getDateTime(self, format, timeDelta, timeZone, targetVarName):\n"
        "    zone = ZoneInfo(self.resolve(timeZone) or 'UTC')\n"
        "    moment = datetime.now(zone) + timedelta(seconds=int(self.resolve(timeDelta) or 0))\n"
        "    pattern = self.resolve(format)\n"
        "    self.variables[targetVarName] = moment.strftime(pattern) if pattern else moment.isoformat()\n",
    ),
    CoreCommand(
        "getTimeStamp",
        "datetime",
        (("dateString", X), ("format", X), ("timeDelta", X), ("targetVarName", V)),
        "Parses a date with the given format and stores its Unix timestamp.",
        "def getTimeStamp(self, dateString, format, timeDelta, targetVarName):\n"
        "    moment = datetime.strptime(self.resolve(dateString), self.resolve(format))\n"
        "    moment = moment.replace(tzinfo=moment.tzinfo or timezone.utc)\n"
        "    self.variables[targetVarName] = int(moment.timestamp()) + int(self.resolve(timeDelta) or 0)\n",
    ),
    CoreCommand(
        "stampToDatetime",
        "datetime",
        (("timestamp", X), ("format", X), ("timeDelta", X), ("targetVarName", V)),
        "Formats a Unix timestamp as a date string.",
        "def stampToDatetime(self, timestamp, format, timeDelta, targetVarName):\n"
        "    seconds = int(self.resolve(timestamp)) + int(self.resolve(timeDelta) or 0)\n"
        "    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)\n"
        "    self.variables[targetVarName] = moment.strftime(self.resolve(format))\n",
    ),
    CoreCommand(
        "encodeSHA256",
        "crypto",
        (("sourceVariable", X), ("targetVarName", V)),
        "Stores the hex SHA-256 digest of a text.",
        "def encodeSHA256(self, sourceVariable, targetVarName):\n"
        "    text = str(self.resolve(sourceVariable))\n"
        "    self.variables[targetVarName] = hashlib.sha256(text.encode('utf-8')).hexdigest()\n",
    ),
    CoreCommand(
        "encodeMD5",
        "crypto",
        (("sourceVariable", X), ("targetVarName", V)),
        "Stores the hex MD5 digest of a text (for legacy checksums, not for security).",
        "def encodeMD5(self, sourceVariable, targetVarName):\n"
        "    text = str(self.resolve(sourceVariable))\n"
        "    digest = hashlib.md5(text.encode('utf-8'), usedforsecurity=False)\n"
        "    self.variables[targetVarName] = digest.hexdigest()\n",
    ),
    CoreCommand(
        "encodeBase64",
        "crypto",
        (("sourceVariable", X), ("targetVarName", V)),
        "Stores the Base64 encoding of a text.",
        "def encodeBase64(self, sourceVariable, targetVarName):\n"
        "    raw = str(self.resolve(sourceVariable)).encode('utf-8')\n"
        "    self.variables[targetVarName] = base64.b64encode(raw).decode('ascii')\n",
    ),
    CoreCommand(
        "decodeBase64",
        "crypto",
        (("sourceVariable", X), ("targetVarName", V)),
        "Decodes Base64 text back into a UTF-8 string.",
        "def decodeBase64(self, sourceVariable, targetVarName):\n"
        "    raw = base64.b64decode(self.resolve(sourceVariable), validate=True)\n"
        "    self.variables[targetVarName] = raw.decode('utf-8')\n",
    ),
    CoreCommand(
        "randomString",
        "string",
        (("pattern", X), ("length", X), ("targetVarName", V)),
        "Stores a random string of the given length drawn from the characters the pattern allows.",
        "def randomString(self, pattern, length, targetVarName):\n"
        "    alphabet = expand_pattern(self.resolve(pattern) or '[a-zA-Z0-9]')\n"
        "    size = int(self.resolve(length))\n"
        "    self.variables[targetVarName] = ''.join(secrets.choice(alphabet) for _ in range(size))\n",
    ),
    CoreCommand(
        "replace",
        "string",
        (("sourceVariable", X), ("searchString", X), ("replaceString", X), ("targetVarName", V)),
        "Stores the text with every occurrence of searchString replaced.",
        "def replace(self, sourceVariable, searchString, replaceString, targetVarName):\n"
        "    text = str(self.resolve(sourceVariable))\n"
        "    self.variables[targetVarName] = text.replace(self.resolve(searchString), self.resolve(replaceString))\n",
    ),
    CoreCommand(
        "getRegex",
        "string",
        (("sourceVariable", X), ("pattern", X), ("targetVarName", V)),
        "Stores the first match of a regular expression in the text (None when there is none).",
        "def getRegex(self, sourceVariable, pattern, targetVarName):\n"
        "    match = re.search(self.resolve(pattern), str(self.resolve(sourceVariable)))\n"
        "    self.variables[targetVarName] = match.group(0) if match else None\n",
    ),
    CoreCommand(
        "variableToList",
        "list",
        (("element", X), ("targetVarName", V)),
        "Stores a new list holding one element.",
        "def variableToList(self, element, targetVarName):\n"
        "    self.variables[targetVarName] = [self.resolve(element)]\n",
    ),
    CoreCommand(
        "itemFromList",
        "list",
        (("sourceVariable", V), ("index", X), ("targetVarName", V)),
        "Stores the element of a list at a zero-based index.",
        "def itemFromList(self, sourceVariable, index, targetVarName):\n"
        "    items = self.variables[sourceVariable]\n"
        "    position = int(self.resolve(index))\n"
        "    if not -len(items) <= position < len(items):\n"
        "        raise AvapError(f'itemFromList: index {position} outside a list of {len(items)}')\n"
        "    self.variables[targetVarName] = items[position]\n",
    ),
    CoreCommand(
        "getListLen",
        "list",
        (("sourceVariable", V), ("targetVarName", V)),
        "Stores the number of elements of a list.",
        "def getListLen(self, sourceVariable, targetVarName):\n"
        "    self.variables[targetVarName] = len(self.variables[sourceVariable])\n",
    ),
    CoreCommand(
        "addItemToList",
        "list",
        (("element", X), ("targetVarName", V)),
        "Appends an element to a list variable, creating the list when needed.",
        "def addItemToList(self, element, targetVarName):\n"
        "    self.variables.setdefault(targetVarName, []).append(self.resolve(element))\n",
    ),
    CoreCommand(
        "variableFromJSON",
        "json",
        (("sourceVariable", V), ("key", X), ("targetVarName", V)),
        "Stores the value under a key (a dotted path) of a JSON object.",
        "def variableFromJSON(self, sourceVariable, key, targetVarName):\n"
        "    value = self.variables[sourceVariable]\n"
        "    if isinstance(value, str):\n"
        "        value = json.loads(value)\n"
        "    for part in str(self.resolve(key)).split('.'):\n"
        "        value = value[int(part)] if isinstance(value, list) else value.get(part)\n"
        "    self.variables[targetVarName] = value\n",
    ),
    CoreCommand(
        "AddVariableToJSON",
        "json",
        (("key", X), ("value", X), ("targetVarName", V)),
        "Sets a key of a JSON object variable, creating the object when needed.",
        "def AddVariableToJSON(self, key, value, targetVarName):\n"
        "    target = self.variables.setdefault(targetVarName, {})\n"
        "    target[self.resolve(key)] = self.resolve(value)\n",
    ),
    CoreCommand(
        "import",
        "modules",
        (("moduleName", X),),
        "Makes the commands of a library available to the script.",
        "def import_(self, moduleName):\n"
        "    name = self.resolve(moduleName)\n"
        "    self.libraries[name] = self.loader.load_library(name)\n",
    ),
    CoreCommand(
        "include",
        "modules",
        (("fileName", X),),
        "Runs another AVAP file of the project in the current context.",
        "def include(self, fileName):\n"
        "    source = self.loader.read_project_file(self.resolve(fileName))\n"
        "    self.run_block(self.parser.parse(source))\n",
    ),
)
