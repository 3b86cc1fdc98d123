#ifndef SYNC_AGENT_CXML2_SHIM_H
#define SYNC_AGENT_CXML2_SHIM_H
/* Debian's libxml2 is built with ICU, and its encoding.h then includes ICU's headers into this
 * module. A Swift module that also imports Foundation (whose _FoundationICU has its own,
 * different unicode/utypes.h) then fails to build on two definitions of UErrorCode, depending
 * on which module a clean build compiles first. The agent never touches libxml2's ICU-only
 * declarations (the ICU converter fields of xmlCharEncodingHandler), so they are left out. */
#include <libxml/xmlversion.h>
#undef LIBXML_ICU_ENABLED
#include <libxml/parser.h>
#include <libxml/xmlerror.h>
#include <libxml/xmlreader.h>
#endif
