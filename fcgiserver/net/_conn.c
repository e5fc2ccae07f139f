/* A compiled twin of the accepted-connection socket (fcgiserver.net.conn).
 *
 * A worker accepts a connection per request (lighttpd opens one for each), and wrapping the
 * new descriptor in a socket object costs a getsockname() system call (CPython checks that
 * the descriptor is a socket) and an object with state the worker never uses; when nothing
 * is queued, accept() raises BlockingIOError, an exception object per failed try. Here
 * accept() returns None for "nothing queued" and a small Conn that has only the methods a
 * worker uses on a connection: fileno, recv_into, recv, send, shutdown, close.
 *
 * Each behaves as the same method of socket.socket (blocking, no timeout) does: the same
 * results, the same OSError subclasses for the same errno, EINTR retried after running the
 * signal handlers (PEP 475), the descriptor closed when the object goes away. The pure-Python
 * twin (conn.accept_pure) returns the C-level socket itself; tests/test_conn.py compares the
 * two. FCGISERVER_PURE=1 turns this module off.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <limits.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct {
    PyObject_HEAD
    int fd;
} Conn;

static PyTypeObject ConnType;

/* The OSError socket.socket raises for errno (PyErr_SetFromErrno picks the subclass). */
static PyObject *
os_error(void)
{
    return PyErr_SetFromErrno(PyExc_OSError);
}

/* recv() or send() of len bytes at buf, retried after EINTR once the signal handlers ran
 * (PEP 475). -1 with errno set for an error; -2 with a Python error when a handler raised. */
static ssize_t
transfer(int sending, int fd, void *buf, size_t len, int flags)
{
    for (;;) {
        ssize_t n;
        Py_BEGIN_ALLOW_THREADS
        n = sending ? send(fd, buf, len, flags) : recv(fd, buf, len, flags);
        Py_END_ALLOW_THREADS
        if (n >= 0 || errno != EINTR) {
            return n;
        }
        if (PyErr_CheckSignals() < 0) {
            return -2;
        }
    }
}

/* An int argument (PyLong_AsInt is public only from Python 3.13). */
static int
as_int(PyObject *obj, int *out)
{
    long value = PyLong_AsLong(obj);
    if (value == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (value < INT_MIN || value > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "signed integer is greater than maximum");
        return -1;
    }
    *out = (int)value;
    return 0;
}

static PyObject *
Conn_fileno(Conn *self, PyObject *unused)
{
    return PyLong_FromLong(self->fd);
}

static PyObject *
Conn_close(Conn *self, PyObject *unused)
{
    int fd = self->fd;
    if (fd != -1) {
        self->fd = -1;
        int res;
        Py_BEGIN_ALLOW_THREADS
        res = close(fd);
        Py_END_ALLOW_THREADS
        /* As socket.close(): ECONNRESET means the peer is gone, which is no error here. */
        if (res < 0 && errno != ECONNRESET) {
            return os_error();
        }
    }
    Py_RETURN_NONE;
}

/* The optional flags argument at args[at], 0 when not given; -1 with an error. */
static int
optional_flags(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t at, int *flags)
{
    *flags = 0;
    return nargs > at ? as_int(args[at], flags) : 0;
}

/* recv_into(buffer, nbytes=0, flags=0) -> int */
static PyObject *
Conn_recv_into(Conn *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "recv_into() takes 1 to 3 arguments");
        return NULL;
    }
    Py_ssize_t nbytes = 0;
    int flags;
    if (nargs > 1) {
        nbytes = PyLong_AsSsize_t(args[1]);
        if (nbytes == -1 && PyErr_Occurred()) {
            return NULL;
        }
    }
    if (optional_flags(args, nargs, 2, &flags) < 0) {
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_WRITABLE) < 0) {
        /* socket.recv_into() says TypeError for a read-only buffer, as argument parsing does. */
        if (PyErr_ExceptionMatches(PyExc_BufferError)) {
            PyErr_Format(PyExc_TypeError,
                         "recv_into() argument 1 must be read-write bytes-like object, not %.100s",
                         Py_TYPE(args[0])->tp_name);
        }
        return NULL;
    }
    if (nbytes < 0) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "negative buffersize in recv_into");
        return NULL;
    }
    if (nbytes == 0) {
        nbytes = view.len;
    }
    if (view.len < nbytes) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "buffer too small for requested bytes");
        return NULL;
    }
    if (nbytes == 0) {
        PyBuffer_Release(&view);
        return PyLong_FromLong(0);  /* as socket.recv_into(): no system call for nothing */
    }
    ssize_t n = transfer(0, self->fd, view.buf, (size_t)nbytes, flags);
    PyBuffer_Release(&view);
    if (n < 0) {
        return n == -2 ? NULL : os_error();
    }
    return PyLong_FromSsize_t(n);
}

/* recv(bufsize, flags=0) -> bytes */
static PyObject *
Conn_recv(Conn *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "recv() takes 1 or 2 arguments");
        return NULL;
    }
    Py_ssize_t size = PyLong_AsSsize_t(args[0]);
    if (size == -1 && PyErr_Occurred()) {
        return NULL;
    }
    int flags;
    if (optional_flags(args, nargs, 1, &flags) < 0) {
        return NULL;
    }
    if (size < 0) {
        PyErr_SetString(PyExc_ValueError, "negative buffersize in recv");
        return NULL;
    }
    if (size == 0) {
        return PyBytes_FromStringAndSize(NULL, 0);  /* as socket.recv(): no system call */
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, size);
    if (out == NULL) {
        return NULL;
    }
    ssize_t n = transfer(0, self->fd, PyBytes_AS_STRING(out), (size_t)size, flags);
    if (n < 0) {
        Py_DECREF(out);
        return n == -2 ? NULL : os_error();
    }
    if (n != size) {
        _PyBytes_Resize(&out, n);
    }
    return out;
}

/* send(data, flags=0) -> int */
static PyObject *
Conn_send(Conn *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "send() takes 1 or 2 arguments");
        return NULL;
    }
    int flags;
    if (optional_flags(args, nargs, 1, &flags) < 0) {
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    ssize_t n = transfer(1, self->fd, view.buf, (size_t)view.len, flags);
    PyBuffer_Release(&view);
    if (n < 0) {
        return n == -2 ? NULL : os_error();
    }
    return PyLong_FromSsize_t(n);
}

static PyObject *
Conn_shutdown(Conn *self, PyObject *arg)
{
    int how;
    if (as_int(arg, &how) < 0) {
        return NULL;
    }
    int res;
    Py_BEGIN_ALLOW_THREADS
    res = shutdown(self->fd, how);
    Py_END_ALLOW_THREADS
    if (res < 0) {
        return os_error();
    }
    Py_RETURN_NONE;
}

static void
Conn_dealloc(Conn *self)
{
    /* As a socket object does: a connection nobody closed is closed when it goes away. */
    if (self->fd != -1) {
        close(self->fd);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Conn_repr(Conn *self)
{
    return PyUnicode_FromFormat("<fcgiserver.net._conn.Conn fd=%d>", self->fd);
}

static PyMethodDef Conn_methods[] = {
    {"fileno", (PyCFunction)Conn_fileno, METH_NOARGS, "The descriptor (-1 once closed)."},
    {"close", (PyCFunction)Conn_close, METH_NOARGS, "Closes the descriptor (again: nothing)."},
    {"recv_into", (PyCFunction)(void (*)(void))Conn_recv_into, METH_FASTCALL,
     "recv_into(buffer, nbytes=0, flags=0) -> int, as socket.recv_into()."},
    {"recv", (PyCFunction)(void (*)(void))Conn_recv, METH_FASTCALL,
     "recv(bufsize, flags=0) -> bytes, as socket.recv()."},
    {"send", (PyCFunction)(void (*)(void))Conn_send, METH_FASTCALL,
     "send(data, flags=0) -> int, as socket.send()."},
    {"shutdown", (PyCFunction)Conn_shutdown, METH_O, "shutdown(how), as socket.shutdown()."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ConnType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "fcgiserver.net._conn.Conn",
    .tp_basicsize = sizeof(Conn),
    .tp_dealloc = (destructor)Conn_dealloc,
    .tp_repr = (reprfunc)Conn_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "An accepted connection (made by accept()).",
    .tp_methods = Conn_methods,
};

PyDoc_STRVAR(accept_doc,
"accept(listen_fd) -> Conn | None\n\n"
"The compiled conn.accept_pure(): the next queued connection, or None when none is.");

static PyObject *
accept_conn(PyObject *module, PyObject *arg)
{
    int listen_fd;
    if (as_int(arg, &listen_fd) < 0) {
        return NULL;
    }
    int fd;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
        Py_END_ALLOW_THREADS
        if (fd >= 0 || errno != EINTR) {
            break;
        }
        if (PyErr_CheckSignals() < 0) {
            return NULL;
        }
    }
    if (fd < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            Py_RETURN_NONE;
        }
        return os_error();
    }
    Conn *conn = PyObject_New(Conn, &ConnType);
    if (conn == NULL) {
        close(fd);
        return NULL;
    }
    conn->fd = fd;
    return (PyObject *)conn;
}

static PyMethodDef methods[] = {
    {"accept", (PyCFunction)accept_conn, METH_O, accept_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "fcgiserver.net._conn",
    "A compiled twin of the accepted-connection socket (see conn.py).", -1, methods,
};

PyMODINIT_FUNC
PyInit__conn(void)
{
    if (PyType_Ready(&ConnType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(module, "Conn", (PyObject *)&ConnType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
