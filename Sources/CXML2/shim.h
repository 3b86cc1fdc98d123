#ifndef SYNC_AGENT_CXML2_SHIM_H
#define SYNC_AGENT_CXML2_SHIM_H
#include <libxml/parser.h>
#include <libxml/xmlerror.h>
#include <libxml/xmlreader.h>
#endif
