/* Compiled twins of the scoreboard's two per-request writes (fcgiserver.shm.scoreboard).
 *
 * A worker writes its slot twice per request (busy, then done). In Python each write is a
 * struct pack between two stores of the slot's sequence counter, about a microsecond for
 * the pair; here it is a few copies. Each function has a pure-Python reference
 * (store_slot_pure and store_state_pure in scoreboard.py) and must leave exactly the same
 * bytes (tests/test_scoreboard.py compares them on random values). FCGISERVER_PURE=1 turns
 * it off.
 *
 * The layout is the scoreboard's struct format, little-endian: the slot starts with its
 * 4-byte sequence counter, then pid (int32), generation (uint32), state (uint8, 3 pad
 * bytes), requests and accepted (uint64), busy_since and last_change (double), the
 * fingerprint, the method, the URI's length (uint16) and the URI. scoreboard.py checks at
 * import that LAYOUT below matches its format before it uses this module.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the slot layout is stored as the host lays it out: little-endian hosts only"
#endif

#define SEQ_SIZE 4
#define AT_PID 0
#define AT_GENERATION 4
#define AT_STATE 8
#define AT_REQUESTS 12
#define AT_ACCEPTED 20
#define AT_BUSY_SINCE 28
#define AT_LAST_CHANGE 36
#define AT_FINGERPRINT 44
#define FINGERPRINT_LEN 16
#define AT_METHOD (AT_FINGERPRINT + FINGERPRINT_LEN)
#define METHOD_LEN 16
#define AT_URI_LEN (AT_METHOD + METHOD_LEN)
#define AT_URI (AT_URI_LEN + 2)
#define SLOT_SIZE 256
#define URI_LEN (SLOT_SIZE - SEQ_SIZE - AT_URI)
/* What store_state writes: state to last_change. */
#define STATE_PART (AT_FINGERPRINT - AT_STATE)

/* The writable bytes of `bufobj` from `offset` for a whole slot, or NULL with an error. */
static unsigned char *
slot_at(PyObject *bufobj, PyObject *offsetobj, Py_buffer *view)
{
    if (PyObject_GetBuffer(bufobj, view, PyBUF_WRITABLE) < 0) {
        return NULL;
    }
    Py_ssize_t offset = PyLong_AsSsize_t(offsetobj);
    if (offset == -1 && PyErr_Occurred()) {
        PyBuffer_Release(view);
        return NULL;
    }
    if (offset < 0 || offset % 4 != 0 || offset > view->len - SLOT_SIZE) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "no whole slot at this offset");
        return NULL;
    }
    return (unsigned char *)view->buf + offset;
}

/* The seqlock's writer side (shm/seqlock.py): the counter odd before the fields change, even
 * after, each store of it one aligned 4-byte store, ordered with the field stores. */
static inline void
seq_store(unsigned char *slot, uint32_t value)
{
    __atomic_store_n((uint32_t *)slot, value, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
}

static inline void
put_u64(unsigned char *p, unsigned long long v)
{
    uint64_t x = (uint64_t)v;
    memcpy(p, &x, 8);
}

static inline void
put_double(unsigned char *p, double v)
{
    memcpy(p, &v, 8);
}

/* A struct "Ns" field: the bytes, cut to the field or padded with zeros. */
static int
put_bytes(unsigned char *p, Py_ssize_t size, PyObject *obj, Py_ssize_t *used)
{
    if (!PyBytes_Check(obj)) {
        PyErr_SetString(PyExc_TypeError, "a bytes field expected");
        return -1;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(obj);
    if (n > size) {
        n = size;
    }
    memcpy(p, PyBytes_AS_STRING(obj), (size_t)n);
    memset(p + n, 0, (size_t)(size - n));
    if (used != NULL) {
        *used = PyBytes_GET_SIZE(obj);
    }
    return 0;
}

/* The values a store takes, converted before the counter turns odd: a bad one fails with the
 * slot untouched. */
typedef struct {
    uint32_t seq;
    unsigned long state;
    unsigned long long requests, accepted;
    double busy_since, now;
} state_part;

static int
read_state_part(PyObject *const *args, state_part *out)
{
    unsigned long seq = PyLong_AsUnsignedLong(args[0]);
    if (seq == (unsigned long)-1 && PyErr_Occurred()) {
        return -1;
    }
    out->seq = (uint32_t)seq;
    out->state = PyLong_AsUnsignedLong(args[1]);
    if (out->state == (unsigned long)-1 && PyErr_Occurred()) {
        return -1;
    }
    if (out->state > 255) {
        PyErr_SetString(PyExc_OverflowError, "state out of range");
        return -1;
    }
    out->requests = PyLong_AsUnsignedLongLong(args[2]);
    if (out->requests == (unsigned long long)-1 && PyErr_Occurred()) {
        return -1;
    }
    out->accepted = PyLong_AsUnsignedLongLong(args[3]);
    if (out->accepted == (unsigned long long)-1 && PyErr_Occurred()) {
        return -1;
    }
    out->busy_since = PyFloat_AsDouble(args[4]);
    if (out->busy_since == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    out->now = PyFloat_AsDouble(args[5]);
    if (out->now == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    return 0;
}

static void
write_state_part(unsigned char *fields, const state_part *v)
{
    fields[AT_STATE] = (unsigned char)v->state;
    memset(fields + AT_STATE + 1, 0, 3);
    put_u64(fields + AT_REQUESTS, v->requests);
    put_u64(fields + AT_ACCEPTED, v->accepted);
    put_double(fields + AT_BUSY_SINCE, v->busy_since);
    put_double(fields + AT_LAST_CHANGE, v->now);
}

/* What store_slot writes besides the state part, converted like it. */
typedef struct {
    int32_t pid;
    uint32_t generation;
    PyObject *fingerprint, *method, *uri;
} identity_part;

static int
read_identity_part(PyObject *const *args, identity_part *out)
{
    long pid = PyLong_AsLong(args[0]);
    if (pid == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (pid < INT32_MIN || pid > INT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "pid out of range");
        return -1;
    }
    unsigned long generation = PyLong_AsUnsignedLong(args[1]);
    if (generation == (unsigned long)-1 && PyErr_Occurred()) {
        return -1;
    }
    if (generation > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "generation out of range");
        return -1;
    }
    for (int i = 2; i < 5; i++) {
        if (!PyBytes_Check(args[i])) {
            PyErr_SetString(PyExc_TypeError, "fingerprint, method and uri are bytes");
            return -1;
        }
    }
    out->pid = (int32_t)pid;
    out->generation = (uint32_t)generation;
    out->fingerprint = args[2];
    out->method = args[3];
    out->uri = args[4];
    return 0;
}

static void
write_identity_part(unsigned char *fields, const identity_part *v)
{
    memcpy(fields + AT_PID, &v->pid, 4);
    memcpy(fields + AT_GENERATION, &v->generation, 4);
    Py_ssize_t uri_len;
    put_bytes(fields + AT_FINGERPRINT, FINGERPRINT_LEN, v->fingerprint, NULL);
    put_bytes(fields + AT_METHOD, METHOD_LEN, v->method, NULL);
    put_bytes(fields + AT_URI, URI_LEN, v->uri, &uri_len);
    /* The length as given (struct packs the H field from len(uri)): the caller cuts the
     * URI to URI_LEN first. */
    uint16_t len16 = (uint16_t)uri_len;
    memcpy(fields + AT_URI_LEN, &len16, 2);
}

/* Both stores: (buf, offset, seq, the state part[, the identity part]) -> the new seq. */
static PyObject *
store(PyObject *const *args, Py_ssize_t nargs, int whole)
{
    Py_ssize_t expected = whole ? 13 : 8;
    if (nargs != expected) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments", whole ? "store_slot" : "store_state",
                     expected);
        return NULL;
    }
    state_part state;
    identity_part identity;
    if (read_state_part(args + 2, &state) < 0 || (whole && read_identity_part(args + 8, &identity) < 0)) {
        return NULL;
    }
    Py_buffer view;
    unsigned char *slot = slot_at(args[0], args[1], &view);
    if (slot == NULL) {
        return NULL;
    }
    uint32_t odd = state.seq + 1, even = state.seq + 2;
    seq_store(slot, odd);
    if (whole) {
        write_identity_part(slot + SEQ_SIZE, &identity);
    }
    write_state_part(slot + SEQ_SIZE, &state);
    seq_store(slot, even);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLong(even);
}

PyDoc_STRVAR(store_state_doc,
"store_state(buf, offset, seq, state, requests, accepted, busy_since, now) -> int\n\n"
"The compiled scoreboard.store_state_pure().");

static PyObject *
store_state(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    return store(args, nargs, 0);
}

PyDoc_STRVAR(store_slot_doc,
"store_slot(buf, offset, seq, state, requests, accepted, busy_since, now, pid, generation,\n"
"           fingerprint, method, uri) -> int\n\n"
"The compiled scoreboard.store_slot_pure().");

static PyObject *
store_slot(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    return store(args, nargs, 1);
}

static PyMethodDef methods[] = {
    {"store_slot", (PyCFunction)(void (*)(void))store_slot, METH_FASTCALL, store_slot_doc},
    {"store_state", (PyCFunction)(void (*)(void))store_state, METH_FASTCALL, store_state_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "fcgiserver.shm._slotstore",
    "Compiled twins of the scoreboard's per-request writes (see scoreboard.py).", -1, methods,
};

PyMODINIT_FUNC
PyInit__slotstore(void)
{
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL) {
        return NULL;
    }
    /* The field offsets and sizes this file was written for; scoreboard.py compares them
     * with its struct format. */
    PyObject *layout = Py_BuildValue("(iiiiiiiiiiii)", SEQ_SIZE, AT_PID, AT_GENERATION, AT_STATE,
                                     AT_REQUESTS, AT_ACCEPTED, AT_BUSY_SINCE, AT_LAST_CHANGE,
                                     AT_FINGERPRINT, AT_METHOD, AT_URI_LEN, AT_URI);
    if (layout == NULL || PyModule_AddObject(module, "LAYOUT", layout) < 0) {
        Py_XDECREF(layout);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
