#pragma once
#include "minicpm/error.h"
