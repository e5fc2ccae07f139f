/* Compiled twins of the per-request hot spots of fcgiserver.protocol.
 *
 * Each function here has a pure-Python reference (named in its docstring) and must behave
 * exactly like it: the same result, or the same RemoteProtocolError with the same message,
 * on any input (tests/test_speedups.py compares them on random bytes). The Python code
 * stays the truth; this file only makes it cheaper. FCGISERVER_PURE=1 turns it off.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static PyObject *RemoteProtocolError; /* fcgiserver.protocol.errors.RemoteProtocolError */
static PyObject *LocalProtocolError;  /* fcgiserver.protocol.errors.LocalProtocolError */

#define MAX_LEN 0x7FFFFFFF

/* -- params ------------------------------------------------------------------------------ */

/* Names repeat from request to request (a front sends the same 20 or so every time), and so
 * do most short values (the method, protocol, host, addresses): the str for each is kept in
 * a small table and reused, which spares building it (and, for a name, hashing it) for every
 * pair. Names are interned, so they are the very objects the code's own constants
 * ("REQUEST_METHOD", ...) are and later dict lookups match on identity. A slot is picked
 * from the length and three of the bytes; a miss replaces the slot. */
#define CACHE_SIZE 256
#define CACHE_MAX_LEN 48
static PyObject *name_cache[CACHE_SIZE];
static PyObject *value_cache[CACHE_SIZE];

static PyObject *
latin1_cached(PyObject **cache, const unsigned char *s, Py_ssize_t n, int intern)
{
    if (n == 0 || n > CACHE_MAX_LEN) {
        return PyUnicode_DecodeLatin1((const char *)s, n, NULL);
    }
    size_t slot = ((size_t)n * 31u + s[0] * 7u + s[n - 1] * 3u + s[n >> 1]) & (CACHE_SIZE - 1);
    PyObject *cached = cache[slot];
    if (cached != NULL && PyUnicode_GET_LENGTH(cached) == n
            && memcmp(PyUnicode_1BYTE_DATA(cached), s, (size_t)n) == 0) {
        return Py_NewRef(cached);
    }
    PyObject *text = PyUnicode_DecodeLatin1((const char *)s, n, NULL);
    if (text == NULL) {
        return NULL;
    }
    if (intern) {
        PyUnicode_InternInPlace(&text);
    }
    /* A latin-1 string is one byte per character: the memcmp above relies on it. */
    if (PyUnicode_KIND(text) == PyUnicode_1BYTE_KIND) {
        Py_XSETREF(cache[slot], Py_NewRef(text));
    }
    return text;
}

static PyObject *
truncated(const char *what)
{
    PyErr_SetString(RemoteProtocolError, what);
    return NULL;
}

/* A 4-byte length (its top bit set) at p. */
static inline Py_ssize_t
long_length(const unsigned char *p)
{
    return (((Py_ssize_t)p[0] << 24) | ((Py_ssize_t)p[1] << 16) | ((Py_ssize_t)p[2] << 8)
            | (Py_ssize_t)p[3]) & MAX_LEN;
}

/* Pairs in a well-formed block, counted without building anything (at most `size`). */
static Py_ssize_t
count_pairs(const unsigned char *data, Py_ssize_t size)
{
    Py_ssize_t pos = 0, pairs = 0;
    while (pos + 1 < size) {
        Py_ssize_t lengths[2];
        for (int i = 0; i < 2; i++) {
            if (pos >= size) {
                return pairs;
            }
            if (data[pos] & 0x80) {
                if (pos + 4 > size) {
                    return pairs;
                }
                lengths[i] = long_length(data + pos);
                pos += 4;
            }
            else {
                lengths[i] = data[pos++];
            }
        }
        pos += lengths[0] + lengths[1];
        pairs++;
    }
    return pairs;
}

/* Room the WSGI bridge adds to the params dict when it makes it the environ (wsgi.*,
 * FCGI_ROLE, defaults): sized in advance, the dict is not rebuilt on the way. */
#define ENVIRON_EXTRA 16

/* params.decode_params_latin1_pure(), pair by pair: same results, same errors, same order of
 * checks (which error a garbled block gets depends on it). */
static PyObject *
decode_block(const unsigned char *data, Py_ssize_t size)
{
    /* Capped: a block of many tiny (or repeated) pairs must not buy a huge table. */
    Py_ssize_t pairs = count_pairs(data, size);
    PyObject *out = _PyDict_NewPresized((pairs < 128 ? pairs : 128) + ENVIRON_EXTRA);
    if (out == NULL) {
        return NULL;
    }
    Py_ssize_t pos = 0;
    while (pos < size) {
        Py_ssize_t name_len, value_len, start;
        if (pos + 1 >= size) {
            Py_DECREF(out);
            return truncated("name-value pair truncated in a length");
        }
        name_len = data[pos];
        value_len = data[pos + 1];
        if (name_len < 0x80 && value_len < 0x80) {
            start = pos + 2;
        }
        else {
            Py_ssize_t p = pos;
            Py_ssize_t lengths[2];
            for (int i = 0; i < 2; i++) {
                if (p >= size) {
                    Py_DECREF(out);
                    return truncated("name-value pair truncated in a length");
                }
                Py_ssize_t n = data[p];
                if (n & 0x80) {
                    if (p + 4 > size) {
                        Py_DECREF(out);
                        return truncated("name-value pair truncated in a 4-byte length");
                    }
                    n = long_length(data + p);
                    p += 4;
                }
                else {
                    p += 1;
                }
                lengths[i] = n;
            }
            name_len = lengths[0];
            value_len = lengths[1];
            start = p;
        }
        Py_ssize_t mid = start + name_len;
        pos = mid + value_len;
        if (pos > size) {
            break; /* the pair runs past the data: reported below, as the reference does */
        }
        PyObject *name = latin1_cached(name_cache, data + start, name_len, 1);
        if (name == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyObject *value = latin1_cached(value_cache, data + mid, value_len, 0);
        if (value == NULL) {
            Py_DECREF(name);
            Py_DECREF(out);
            return NULL;
        }
        int failed = PyDict_SetItem(out, name, value);
        Py_DECREF(name);
        Py_DECREF(value);
        if (failed) {
            Py_DECREF(out);
            return NULL;
        }
    }
    if (pos > size) {
        Py_DECREF(out);
        return truncated("name-value pair longer than the data holding it");
    }
    return out;
}

PyDoc_STRVAR(decode_params_latin1_doc,
"decode_params_latin1(data) -> dict[str, str]\n\n"
"The compiled params.decode_params_latin1_pure().");

static PyObject *
decode_params_latin1(PyObject *module, PyObject *data)
{
    if (PyBytes_CheckExact(data)) {
        return decode_block((const unsigned char *)PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data));
    }
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    PyObject *out = decode_block((const unsigned char *)view.buf, view.len);
    PyBuffer_Release(&view);
    return out;
}

/* -- the whole request in one piece ---------------------------------------------------------- */

#define BEGIN_REQUEST 1
#define PARAMS 4
#define STDIN 5

typedef struct {
    int version, type, request_id, length, padding;
} header;

static inline header
read_header(const unsigned char *p)
{
    header h = {p[0], p[1], (p[2] << 8) | p[3], (p[4] << 8) | p[5], p[6]};
    return h;
}

/* What scan() found: a request whose BEGIN_REQUEST and PARAMS stream lie whole in the buffer. */
typedef struct {
    Py_ssize_t end;        /* offset past the request (and its empty STDIN, if there) */
    Py_ssize_t params_at;  /* offset of the first PARAMS record */
    Py_ssize_t size;       /* the params block's size, over all its records */
    int pieces;            /* PARAMS records with content */
    int request_id, role, flags, stdin_ended;
} scanned;

/* connection.scan_whole_request_pure() without building anything: 1 when found. */
static int
scan(const unsigned char *buf, Py_ssize_t end, Py_ssize_t pos, Py_ssize_t max_params_size, scanned *out)
{
    if (pos < 0 || end - pos < 16) {
        return 0;
    }
    header h = read_header(buf + pos);
    if (h.version != 1 || h.type != BEGIN_REQUEST || h.length != 8 || h.request_id == 0) {
        return 0;
    }
    out->request_id = h.request_id;
    out->role = (buf[pos + 8] << 8) | buf[pos + 9];
    out->flags = buf[pos + 10];
    if (out->role != 1 && out->role != 2) { /* RESPONDER, AUTHORIZER */
        return 0;
    }
    pos += 16 + h.padding;
    out->params_at = pos;
    out->size = 0;
    out->pieces = 0;
    for (;;) {
        if (end - pos < 8) {
            return 0;
        }
        h = read_header(buf + pos);
        pos += 8 + h.length + h.padding;
        if (h.version != 1 || h.type != PARAMS || h.request_id != out->request_id || pos > end) {
            return 0;
        }
        if (h.length == 0) {
            break;
        }
        out->size += h.length;
        out->pieces++;
    }
    if (out->size > max_params_size) {
        return 0;
    }
    out->stdin_ended = 0;
    if (end - pos >= 8) {
        h = read_header(buf + pos);
        if (h.version == 1 && h.type == STDIN && h.request_id == out->request_id && h.length == 0
                && pos + 8 + h.padding <= end) {
            pos += 8 + h.padding;
            out->stdin_ended = 1;
        }
    }
    out->end = pos;
    return 1;
}

/* The params block of a scanned request, copied out of its records into `to`. */
static void
copy_params(const unsigned char *buf, const scanned *found, unsigned char *to)
{
    unsigned char *stop = to + found->size;
    for (Py_ssize_t at = found->params_at; to < stop;) {
        header piece = read_header(buf + at);
        memcpy(to, buf + at + 8, (size_t)piece.length);
        to += piece.length;
        at += 8 + piece.length + piece.padding;
    }
}

/* A new tuple holding `items` (references stolen), or NULL with every item released. Built
 * by hand: Py_BuildValue parses its format on every call, half a scan's cost. */
static PyObject *
tuple_of(PyObject **items, int n)
{
    PyObject *out = PyTuple_New(n);
    int missing = out == NULL;
    for (int i = 0; i < n; i++) {
        missing |= items[i] == NULL;
    }
    if (missing) {
        Py_XDECREF(out);
        for (int i = 0; i < n; i++) {
            Py_XDECREF(items[i]);
        }
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        PyTuple_SET_ITEM(out, i, items[i]);
    }
    return out;
}

static int
bytes_and_sizes(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want, const char *name, Py_ssize_t *sizes)
{
    if (nargs != want || !PyBytes_CheckExact(args[0])) {
        PyErr_Format(PyExc_TypeError, "%s() takes bytes and %zd numbers", name, want - 1);
        return -1;
    }
    for (Py_ssize_t i = 1; i < want; i++) {
        sizes[i - 1] = PyLong_AsSsize_t(args[i]);
        if (sizes[i - 1] == -1 && PyErr_Occurred()) {
            return -1;
        }
    }
    return 0;
}

PyDoc_STRVAR(scan_whole_request_doc,
"scan_whole_request(buf, pos, max_params_size) -> tuple | None\n\n"
"The compiled connection.scan_whole_request_pure().");

static PyObject *
scan_whole_request(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t numbers[2];
    if (bytes_and_sizes(args, nargs, 3, "scan_whole_request", numbers) < 0) {
        return NULL;
    }
    const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    scanned found;
    if (!scan(buf, PyBytes_GET_SIZE(args[0]), numbers[0], numbers[1], &found)) {
        Py_RETURN_NONE;
    }
    PyObject *raw = PyBytes_FromStringAndSize(NULL, found.size);
    if (raw == NULL) {
        return NULL;
    }
    copy_params(buf, &found, (unsigned char *)PyBytes_AS_STRING(raw));
    PyObject *items[6] = {PyLong_FromSsize_t(found.end), PyLong_FromLong(found.request_id),
                          PyLong_FromLong(found.role), PyLong_FromLong(found.flags), raw,
                          Py_NewRef(found.stdin_ended ? Py_True : Py_False)};
    return tuple_of(items, 6);
}

PyDoc_STRVAR(take_request_doc,
"take_request(buf, max_params_size) -> tuple | None\n\n"
"The compiled connection.take_request_pure().");

static PyObject *
take_request(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t numbers[1];
    if (bytes_and_sizes(args, nargs, 2, "take_request", numbers) < 0) {
        return NULL;
    }
    const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    scanned found;
    if (!scan(buf, PyBytes_GET_SIZE(args[0]), 0, numbers[0], &found) || !found.stdin_ended) {
        Py_RETURN_NONE;
    }
    PyObject *params;
    if (found.pieces <= 1) {
        /* The usual block: one record, decoded where it lies. */
        params = decode_block(buf + found.params_at + 8, found.size);
    }
    else {
        unsigned char *block = PyMem_Malloc(found.size ? (size_t)found.size : 1);
        if (block == NULL) {
            return PyErr_NoMemory();
        }
        copy_params(buf, &found, block);
        params = decode_block(block, found.size);
        PyMem_Free(block);
    }
    if (params == NULL) {
        if (!PyErr_ExceptionMatches(RemoteProtocolError)) {
            return NULL;
        }
        PyErr_Clear(); /* the record loop reports it, from the same bytes */
        Py_RETURN_NONE;
    }
    PyObject *items[5] = {PyLong_FromSsize_t(found.end), PyLong_FromLong(found.request_id),
                          PyLong_FromLong(found.role), PyLong_FromLong(found.flags), params};
    return tuple_of(items, 5);
}

/* -- the end of a response ------------------------------------------------------------------ */

#define STDOUT 6
#define END_REQUEST 3
#define MAX_CONTENT 0xFFFF

static void
put_header(unsigned char *p, int type, long request_id, Py_ssize_t length, int padding)
{
    p[0] = 1;
    p[1] = (unsigned char)type;
    p[2] = (unsigned char)(request_id >> 8);
    p[3] = (unsigned char)request_id;
    p[4] = (unsigned char)(length >> 8);
    p[5] = (unsigned char)length;
    p[6] = (unsigned char)padding;
    p[7] = 0;
}

PyDoc_STRVAR(frame_final_doc,
"frame_final(request_id, data) -> bytes\n\n"
"The compiled connection.frame_final_pure().");

static PyObject *
frame_final(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyBytes_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "frame_final() takes a request id and bytes");
        return NULL;
    }
    long request_id = PyLong_AsLong(args[0]);
    if (request_id == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t length = PyBytes_GET_SIZE(args[1]);
    if (request_id <= 0 || request_id > 0xFFFF || length > MAX_CONTENT) {
        return PyErr_Format(LocalProtocolError, "cannot frame %zd bytes for request %ld", length, request_id);
    }
    int padding = (int)((8 - length % 8) % 8);
    Py_ssize_t body = length ? 8 + length + padding : 0;
    /* The STDOUT record, the empty one closing STDOUT, END_REQUEST (8 bytes of header, 8 of body). */
    PyObject *out = PyBytes_FromStringAndSize(NULL, body + 8 + 16);
    if (out == NULL) {
        return NULL;
    }
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out);
    if (length) {
        put_header(p, STDOUT, request_id, length, padding);
        memcpy(p + 8, PyBytes_AS_STRING(args[1]), (size_t)length);
        memset(p + 8 + length, 0, (size_t)padding);
        p += body;
    }
    put_header(p, STDOUT, request_id, 0, 0);
    put_header(p + 8, END_REQUEST, request_id, 8, 0);
    memset(p + 16, 0, 8); /* app status 0, REQUEST_COMPLETE, reserved */
    return out;
}

/* -- module ---------------------------------------------------------------------------------- */

static PyMethodDef methods[] = {
    {"decode_params_latin1", (PyCFunction)decode_params_latin1, METH_O, decode_params_latin1_doc},
    {"scan_whole_request", (PyCFunction)(void (*)(void))scan_whole_request, METH_FASTCALL,
     scan_whole_request_doc},
    {"take_request", (PyCFunction)(void (*)(void))take_request, METH_FASTCALL, take_request_doc},
    {"frame_final", (PyCFunction)(void (*)(void))frame_final, METH_FASTCALL, frame_final_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "fcgiserver.protocol._speedups",
    "Compiled twins of fcgiserver.protocol's per-request hot spots.", -1, methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    PyObject *errors = PyImport_ImportModule("fcgiserver.protocol.errors");
    if (errors == NULL) {
        return NULL;
    }
    RemoteProtocolError = PyObject_GetAttrString(errors, "RemoteProtocolError");
    LocalProtocolError = PyObject_GetAttrString(errors, "LocalProtocolError");
    Py_DECREF(errors);
    if (RemoteProtocolError == NULL || LocalProtocolError == NULL) {
        return NULL;
    }
    return PyModule_Create(&module_def);
}
