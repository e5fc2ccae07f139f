/* Compiled twins of two per-request steps of the WSGI bridge.
 *
 * build_environ() is bridge.build_environ_pure() and header_block() is
 * response.header_block_pure(): each must behave exactly like its reference, the same
 * environ (the same keys in the same order, the same objects) or the same exception, on any
 * input (tests/test_bridge_compiled.py compares them on random input). They take the usual
 * case here and hand the rest to Python: an environ that is not a plain dict, a mount
 * prefix to apply, a status or header that must be explained. The Python code stays the
 * truth; FCGISERVER_PURE=1 turns this off.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* What bind_environ() and bind_head() hand over from the Python modules: both sides share
 * one definition of each. */
static PyObject *build_environ_pure;  /* bridge.build_environ_pure */
static PyObject *fix_script_name;     /* bridge.fix_script_name */
static PyObject *is_on;               /* bridge._is_on */
static PyObject *wsgi_constants;      /* bridge._WSGI_CONSTANTS (a dict) */
static PyObject *role_names;          /* bridge._ROLE_NAMES (a dict) */
static PyObject *heads;               /* response._heads (a dict: both sides fill the same cache) */
static Py_ssize_t heads_max;          /* response._HEADS_MAX */
static PyObject *build_head;          /* response._build */
static PyObject *explain;             /* response._explain */

/* Interned, as the params decoder's names are: dict lookups match on identity. */
static PyObject *k_https, *k_request_scheme, *k_path_info, *k_script_name, *k_http_content_length,
    *k_http_content_type, *k_content_type, *k_fcgi_role, *k_url_scheme, *k_input, *k_errors,
    *k_server_port;
static PyObject *s_http, *s_https, *s_empty, *s_80, *s_443;

#define N_DEFAULTS 4
static PyObject *cgi_names[N_DEFAULTS];
static PyObject *cgi_defaults[N_DEFAULTS];

static int
bound(PyObject *last_bound)
{
    if (last_bound == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "fcgiserver.wsgi._bridge is not bound yet");
        return 0;
    }
    return 1;
}

/* -- environ ----------------------------------------------------------------------------- */

/* _is_on(value): ASCII text is lowered here; anything else asks the reference. */
static int
https_on(PyObject *value)
{
    if (PyUnicode_CheckExact(value) && PyUnicode_IS_ASCII(value)) {
        Py_ssize_t n = PyUnicode_GET_LENGTH(value);
        if (n > 4) {
            return 0;
        }
        char low[5];
        const Py_UCS1 *s = PyUnicode_1BYTE_DATA(value);
        for (Py_ssize_t i = 0; i < n; i++) {
            low[i] = (char)((s[i] >= 'A' && s[i] <= 'Z') ? s[i] + 32 : s[i]);
        }
        low[n] = '\0';
        return strcmp(low, "on") == 0 || strcmp(low, "1") == 0 || strcmp(low, "yes") == 0
               || strcmp(low, "true") == 0;
    }
    PyObject *answer = PyObject_CallOneArg(is_on, value);
    if (answer == NULL) {
        return -1;
    }
    int on = PyObject_IsTrue(answer);
    Py_DECREF(answer);
    return on;
}

/* Truthiness of env.get(key): 0 when absent. */
static int
get_true(PyObject *env, PyObject *key)
{
    PyObject *value = PyDict_GetItemWithError(env, key);
    if (value == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    Py_INCREF(value);  /* __bool__ may run code that changes the dict */
    int truth = PyObject_IsTrue(value);
    Py_DECREF(value);
    return truth;
}

/* 1 when the extra pairs are a tuple of 2-tuples; 0 sends the call to the reference. */
static int
extra_is_plain(PyObject *extra)
{
    if (!PyTuple_CheckExact(extra)) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(extra); i++) {
        PyObject *item = PyTuple_GET_ITEM(extra, i);
        if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2) {
            return 0;
        }
    }
    return 1;
}

/* The scheme (a new reference): "https" or "http", or REQUEST_SCHEME's own object when it
 * equals "https" (the reference keeps that object). */
static PyObject *
url_scheme(PyObject *env)
{
    PyObject *https = PyDict_GetItemWithError(env, k_https);
    if (https != NULL && https != Py_None) {
        Py_INCREF(https);
        int on = https_on(https);
        Py_DECREF(https);
        if (on < 0) {
            return NULL;
        }
        return Py_NewRef(on ? s_https : s_http);
    }
    if (PyErr_Occurred()) {
        return NULL;
    }
    PyObject *scheme = PyDict_GetItemWithError(env, k_request_scheme);
    if (scheme == NULL) {
        return PyErr_Occurred() ? NULL : Py_NewRef(s_http);
    }
    Py_INCREF(scheme);
    int other = PyObject_RichCompareBool(scheme, s_https, Py_NE);
    if (other != 0) {
        Py_DECREF(scheme);
        return other < 0 ? NULL : Py_NewRef(s_http);
    }
    return scheme;
}

static int
cgi_defaults_in(PyObject *env, PyObject *scheme)
{
    int all = 1;
    for (int i = 0; i < N_DEFAULTS && all; i++) {
        int has = PyDict_Contains(env, cgi_names[i]);
        if (has < 0) {
            return -1;
        }
        all = has;
    }
    if (all) {
        int has = PyDict_Contains(env, k_server_port);
        if (has != 0) {
            return has < 0 ? -1 : 0;
        }
    }
    for (int i = 0; i < N_DEFAULTS; i++) {
        int has = PyDict_Contains(env, cgi_names[i]);
        if (has < 0 || (!has && PyDict_SetItem(env, cgi_names[i], cgi_defaults[i]) < 0)) {
            return -1;
        }
    }
    int has = PyDict_Contains(env, k_server_port);
    if (has < 0) {
        return -1;
    }
    if (!has) {
        int plain = PyObject_RichCompareBool(scheme, s_http, Py_EQ);
        if (plain < 0 || PyDict_SetItem(env, k_server_port, plain ? s_80 : s_443) < 0) {
            return -1;
        }
    }
    return 0;
}

static int
split_path(PyObject *env, PyObject *script_name)
{
    if (script_name == Py_None) {
        int path = get_true(env, k_path_info);
        if (path < 0) {
            return -1;
        }
        if (path) {
            int script = get_true(env, k_script_name);
            if (script < 0) {
                return -1;
            }
            if (!script) {
                return PyDict_SetItem(env, k_script_name, s_empty);
            }
        }
    }
    PyObject *done = PyObject_CallFunctionObjArgs(fix_script_name, env, script_name, NULL);
    Py_XDECREF(done);
    return done == NULL ? -1 : 0;
}

static int
content_headers(PyObject *env)
{
    int has = PyDict_Contains(env, k_http_content_length);
    if (has < 0 || (has && PyDict_DelItem(env, k_http_content_length) < 0)) {
        return -1;
    }
    has = PyDict_Contains(env, k_http_content_type);
    if (has < 0) {
        return -1;
    }
    if (has) {
        PyObject *value = PyDict_GetItemWithError(env, k_http_content_type);
        if (value == NULL) {
            if (!PyErr_Occurred()) {
                PyErr_SetObject(PyExc_KeyError, k_http_content_type);
            }
            return -1;
        }
        Py_INCREF(value);
        int failed = PyDict_DelItem(env, k_http_content_type) < 0;
        PyObject *kept = failed ? NULL : PyDict_SetDefault(env, k_content_type, value);
        Py_DECREF(value);
        if (kept == NULL) {
            return -1;
        }
    }
    return 0;
}

PyDoc_STRVAR(build_environ_doc,
"build_environ(params, role, wsgi_input, errors, script_name=None, extra=()) -> dict\n\n"
"The compiled bridge.build_environ_pure().");

static PyObject *
build_environ(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (!bound(build_environ_pure)) {
        return NULL;
    }
    PyObject *script_name = nargs > 4 ? args[4] : Py_None;
    PyObject *extra = nargs > 5 ? args[5] : NULL;
    if (nargs < 4 || nargs > 6 || !PyDict_CheckExact(args[0]) || (extra != NULL && !extra_is_plain(extra))) {
        return PyObject_Vectorcall(build_environ_pure, args, (size_t)nargs, NULL);
    }
    PyObject *env = args[0];
    if (extra != NULL) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(extra); i++) {
            PyObject *item = PyTuple_GET_ITEM(extra, i);
            if (PyDict_SetDefault(env, PyTuple_GET_ITEM(item, 0), PyTuple_GET_ITEM(item, 1)) == NULL) {
                return NULL;
            }
        }
    }
    PyObject *scheme = url_scheme(env);
    if (scheme == NULL) {
        return NULL;
    }
    if (cgi_defaults_in(env, scheme) < 0 || split_path(env, script_name) < 0 || content_headers(env) < 0
            || PyDict_Update(env, wsgi_constants) < 0) {
        Py_DECREF(scheme);
        return NULL;
    }
    PyObject *role = PyDict_GetItemWithError(role_names, args[1]);
    if (role == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetObject(PyExc_KeyError, args[1]);
        }
        Py_DECREF(scheme);
        return NULL;
    }
    int failed = PyDict_SetItem(env, k_fcgi_role, role) < 0 || PyDict_SetItem(env, k_url_scheme, scheme) < 0
                 || PyDict_SetItem(env, k_input, args[2]) < 0 || PyDict_SetItem(env, k_errors, args[3]) < 0;
    Py_DECREF(scheme);
    return failed ? NULL : Py_NewRef(env);
}

/* -- the response head ------------------------------------------------------------------- */

static PyObject *
raise_explained(PyObject *status, PyObject *headers)
{
    PyObject *exc = PyObject_CallFunctionObjArgs(explain, status, headers, NULL);
    if (exc != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

PyDoc_STRVAR(header_block_doc,
"header_block(status, headers) -> tuple[bytes, int | None]\n\n"
"The compiled response.header_block_pure().");

static PyObject *
header_block(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (!bound(heads)) {
        return NULL;
    }
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "header_block() takes 2 arguments");
        return NULL;
    }
    PyObject *status = args[0], *headers = args[1];
    if (!PyUnicode_CheckExact(status) || !PyList_CheckExact(headers)) {
        return raise_explained(status, headers);
    }
    Py_ssize_t n = PyList_GET_SIZE(headers);
    PyObject *key = PyTuple_New(n + 1);
    if (key == NULL) {
        return NULL;
    }
    PyTuple_SET_ITEM(key, 0, Py_NewRef(status));
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(headers, i);
        if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2 || !PyUnicode_CheckExact(PyTuple_GET_ITEM(item, 0))
                || !PyUnicode_CheckExact(PyTuple_GET_ITEM(item, 1))) {
            Py_DECREF(key);
            return raise_explained(status, headers);
        }
        PyTuple_SET_ITEM(key, i + 1, Py_NewRef(item));
    }
    PyObject *head = PyDict_GetItemWithError(heads, key);
    if (head != NULL) {
        Py_DECREF(key);
        return Py_NewRef(head);
    }
    if (PyErr_Occurred()) {
        Py_DECREF(key);
        return NULL;
    }
    head = PyObject_CallFunctionObjArgs(build_head, status, headers, NULL);
    if (head != NULL && PyDict_GET_SIZE(heads) >= heads_max) {
        PyDict_Clear(heads);
    }
    if (head == NULL || PyDict_SetItem(heads, key, head) < 0) {
        Py_XDECREF(head);
        Py_DECREF(key);
        return NULL;
    }
    Py_DECREF(key);
    return head;
}

/* -- binding ----------------------------------------------------------------------------- */

static int
keep(PyObject **slot, PyObject *value, int must_be_dict)
{
    if (must_be_dict && !PyDict_CheckExact(value)) {
        PyErr_SetString(PyExc_TypeError, "bind: expected a dict");
        return -1;
    }
    Py_XSETREF(*slot, Py_NewRef(value));
    return 0;
}

PyDoc_STRVAR(bind_environ_doc,
"bind_environ(build_environ_pure, fix_script_name, is_on, wsgi_constants, role_names) -> None\n\n"
"Hands over bridge.py's definitions, which build_environ() shares (bridge.py calls it).");

static PyObject *
bind_environ(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "bind_environ() takes 5 arguments");
        return NULL;
    }
    /* The reference last: build_environ() runs only once it is set. */
    if (keep(&fix_script_name, args[1], 0) < 0 || keep(&is_on, args[2], 0) < 0
            || keep(&wsgi_constants, args[3], 1) < 0 || keep(&role_names, args[4], 1) < 0
            || keep(&build_environ_pure, args[0], 0) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(bind_head_doc,
"bind_head(heads, heads_max, build, explain) -> None\n\n"
"Hands over response.py's cache and checks, which header_block() shares (response.py calls it).");

static PyObject *
bind_head(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "bind_head() takes 4 arguments");
        return NULL;
    }
    Py_ssize_t max = PyLong_AsSsize_t(args[1]);
    if (max == -1 && PyErr_Occurred()) {
        return NULL;
    }
    heads_max = max;
    if (keep(&build_head, args[2], 0) < 0 || keep(&explain, args[3], 0) < 0 || keep(&heads, args[0], 1) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"build_environ", (PyCFunction)(void (*)(void))build_environ, METH_FASTCALL, build_environ_doc},
    {"header_block", (PyCFunction)(void (*)(void))header_block, METH_FASTCALL, header_block_doc},
    {"bind_environ", (PyCFunction)(void (*)(void))bind_environ, METH_FASTCALL, bind_environ_doc},
    {"bind_head", (PyCFunction)(void (*)(void))bind_head, METH_FASTCALL, bind_head_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "fcgiserver.wsgi._bridge",
    "Compiled twins of the WSGI bridge's per-request steps.", -1, methods,
};

static int
intern_all(void)
{
    struct {
        PyObject **to;
        const char *text;
    } names[] = {
        {&k_https, "HTTPS"}, {&k_request_scheme, "REQUEST_SCHEME"}, {&k_path_info, "PATH_INFO"},
        {&k_script_name, "SCRIPT_NAME"}, {&k_http_content_length, "HTTP_CONTENT_LENGTH"},
        {&k_http_content_type, "HTTP_CONTENT_TYPE"}, {&k_content_type, "CONTENT_TYPE"},
        {&k_fcgi_role, "FCGI_ROLE"}, {&k_url_scheme, "wsgi.url_scheme"}, {&k_input, "wsgi.input"},
        {&k_errors, "wsgi.errors"}, {&k_server_port, "SERVER_PORT"}, {&s_http, "http"},
        {&s_https, "https"}, {&s_empty, ""}, {&s_80, "80"}, {&s_443, "443"},
        {&cgi_names[0], "REQUEST_METHOD"}, {&cgi_names[1], "QUERY_STRING"}, {&cgi_names[2], "SERVER_NAME"},
        {&cgi_names[3], "SERVER_PROTOCOL"}, {&cgi_defaults[0], "GET"}, {&cgi_defaults[1], ""},
        {&cgi_defaults[2], "localhost"}, {&cgi_defaults[3], "HTTP/1.0"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        *names[i].to = PyUnicode_InternFromString(names[i].text);
        if (*names[i].to == NULL) {
            return -1;
        }
    }
    return 0;
}

PyMODINIT_FUNC
PyInit__bridge(void)
{
    if (intern_all() < 0) {
        return NULL;
    }
    return PyModule_Create(&module_def);
}
