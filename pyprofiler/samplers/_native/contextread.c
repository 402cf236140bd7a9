/* A context's variables are a HAMT (Python/hamt.c): a tree of nodes indexed five bits of the
 * key's hash at a time. Keys are ContextVar objects, which compare by identity, so the walk
 * follows the variable's own hash and compares addresses: no Python code runs. The context and
 * mapping structures are internal, hence the core build of this file; the node structures are
 * private to hamt.c, so their layouts (the same from 3.9 to 3.13) are declared here and checked
 * by ppf_learn_contexts() on real contexts before any read is trusted. */
#define Py_BUILD_CORE
#include "contextread.h"

#include "internal/pycore_context.h"
#include "internal/pycore_hamt.h"
#include "stackread.h"

#define NODE_SLOTS 32
#define HASH_BITS 5
#define MAX_LEVELS 7 /* 32 bits of hash, five at a time */

typedef struct {
    PyObject_VAR_HEAD
    uint32_t bitmap;
    PyObject *slots[1]; /* (key, value) pairs; a NULL key: the value is a node */
} bitmap_node_t;

typedef struct {
    PyObject_HEAD
    PyHamtNode *children[NODE_SLOTS];
    Py_ssize_t count;
} array_node_t;

typedef struct {
    PyObject_VAR_HEAD
    int32_t hash;
    PyObject *slots[1]; /* (key, value) pairs of keys whose hashes are all equal */
} collision_node_t;

static uintptr_t bitmap_type, array_type;
static uintptr_t variable;
static uint32_t variable_hash;
static int learnt;

/* hamt.c's hash of a key: Python's, folded to 32 bits. */
static uint32_t
folded_hash(Py_hash_t hash)
{
#if SIZEOF_PY_HASH_T <= 4
    return (uint32_t)hash;
#else
    int32_t folded = (int32_t)(hash & 0xffffffffL) ^ (int32_t)(hash >> 32);
    return (uint32_t)(folded == -1 ? -2 : folded);
#endif
}

static uintptr_t
read_pointer(uintptr_t address)
{
    uintptr_t value = 0;
    return ppf_safe_read(address, &value, sizeof value) == 0 ? value : 0;
}

static uintptr_t
find_in_pairs(uintptr_t slots, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i + 1 < n && i < 2 * NODE_SLOTS; i += 2) {
        uintptr_t pair[2];
        if (ppf_safe_read(slots + (uintptr_t)i * sizeof(PyObject *), pair, sizeof pair) < 0) {
            return 0;
        }
        if (pair[0] == variable) {
            return pair[1];
        }
    }
    return 0;
}

static uintptr_t
value_in(uintptr_t context)
{
    PyContext ctx;
    PyHamtObject mapping;
    if (context == 0 || ppf_safe_read(context, &ctx, sizeof ctx) < 0 ||
        ppf_safe_read((uintptr_t)ctx.ctx_vars, &mapping, sizeof mapping) < 0) {
        return 0;
    }
    uintptr_t node = (uintptr_t)mapping.h_root;
    for (int level = 0; level < MAX_LEVELS && node != 0; level++) {
        uint32_t index = (variable_hash >> (level * HASH_BITS)) & (NODE_SLOTS - 1);
        bitmap_node_t head; /* the header and bitmap: as far as the three layouts agree */
        if (ppf_safe_read(node, &head, offsetof(bitmap_node_t, slots)) < 0) {
            return 0;
        }
        uintptr_t type = (uintptr_t)head.ob_base.ob_base.ob_type;
        Py_ssize_t size = head.ob_base.ob_size;
        if (type == array_type) {
            node = read_pointer(node + offsetof(array_node_t, children) +
                                index * sizeof(PyHamtNode *));
            continue;
        }
        if (type != bitmap_type) { /* a collision node: keys of one full hash */
            return find_in_pairs(node + offsetof(collision_node_t, slots), size);
        }
        uint32_t bit = 1u << index;
        if ((head.bitmap & bit) == 0) {
            return 0;
        }
        uint32_t position = (uint32_t)__builtin_popcount(head.bitmap & (bit - 1));
        uintptr_t pair[2];
        if (2 * (Py_ssize_t)position + 1 >= size ||
            ppf_safe_read(node + offsetof(bitmap_node_t, slots) + 2 * position * sizeof(PyObject *),
                          pair, sizeof pair) < 0) {
            return 0;
        }
        if (pair[0] == 0) {
            node = pair[1]; /* a subtree */
            continue;
        }
        return pair[0] == variable ? pair[1] : 0;
    }
    return 0;
}

uintptr_t
ppf_context_value(uintptr_t context)
{
    return __atomic_load_n(&learnt, __ATOMIC_ACQUIRE) ? value_in(context) : 0;
}

uintptr_t
ppf_context_value_here(void)
{
    PyThreadState *tstate = PyThreadState_Get();
    PyObject *value = NULL;
    /* Without a context, the variable's lookup would make one, allocating. */
    if (!__atomic_load_n(&learnt, __ATOMIC_ACQUIRE) || tstate->context == NULL ||
        PyContextVar_Get((PyObject *)variable, NULL, &value) < 0) {
        return 0;
    }
    Py_XDECREF(value); /* Interned sets live on: the address stays theirs. */
    return (uintptr_t)value;
}

PyObject *
ppf_thread_labels(PyObject *module, PyObject *unused)
{
    PyObject *result = PyDict_New();
    PyInterpreterState *interp = PyThreadState_Get()->interp;
    for (PyThreadState *tstate = PyInterpreterState_ThreadHead(interp);
         result != NULL && tstate != NULL; tstate = PyThreadState_Next(tstate)) {
        uintptr_t value = ppf_context_value((uintptr_t)tstate->context);
        PyObject *ident = PyLong_FromUnsignedLong(tstate->thread_id);
        PyObject *address = PyLong_FromSize_t(value);
        if (ident == NULL || address == NULL || PyDict_SetItem(result, ident, address) < 0) {
            Py_CLEAR(result);
        }
        Py_XDECREF(ident);
        Py_XDECREF(address);
    }
    return result;
}

static uintptr_t
root_type(PyObject *context)
{
    return (uintptr_t)Py_TYPE(((PyContext *)context)->ctx_vars->h_root);
}

PyObject *
ppf_learn_contexts(PyObject *module, PyObject *args)
{
    PyObject *empty, *full, *var, *value;
    if (!PyArg_ParseTuple(args, "O!O!O!O", &PyContext_Type, &empty, &PyContext_Type, &full,
                          &PyContextVar_Type, &var, &value)) {
        return NULL;
    }
    Py_hash_t hash = PyObject_Hash(var);
    if (hash == -1) {
        return NULL;
    }
    __atomic_store_n(&learnt, 0, __ATOMIC_RELEASE);
    bitmap_type = root_type(empty);
    array_type = root_type(full);
    variable = (uintptr_t)var;
    variable_hash = folded_hash(hash);
    Py_INCREF(var); /* Read by address from now on: it must outlive every sampler. */
    int ok = bitmap_type != array_type && ppf_stackread_available() &&
             value_in((uintptr_t)full) == (uintptr_t)value && value_in((uintptr_t)empty) == 0;
    __atomic_store_n(&learnt, ok, __ATOMIC_RELEASE);
    return PyBool_FromLong(ok);
}
